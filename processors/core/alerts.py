"""Alerts that reach a person on a local run: control events → an Alertmanager-style webhook.

With ``alert_webhook_url`` set, ``skyloop run`` follows ``control.events`` (its own
:class:`~processors.core.kafka.ControlFollower`, in the run's supervising process, so no
worker's batch ever waits on it) and POSTs the JSON that Alertmanager's webhook receiver sends
(``version`` "4", ``status``, ``alerts`` with ``labels``, ``annotations``, ``startsAt``,
``endsAt``, ``fingerprint``; ``groupLabels``, ``commonLabels``, ``commonAnnotations``,
``externalURL``, ``groupKey``, ``receiver``, ``truncatedAlerts``), one alert per payload:

=================================  ============================  ========  ======================
event                              alert                         severity  resolved by
=================================  ============================  ========  ======================
``pipeline.paused`` (any issuer)   ``SkyloopPipelinePaused``     page      ``pipeline.resumed``
``source.paused`` by the           ``SkyloopSourcePaused``       ticket    ``source.resumed`` of
controller (error back-off)        (label ``source``)                      that source
``model.rolled_back``              ``SkyloopModelRolledBack``    page      (an event: never)
                                   (label ``model_version``)
=================================  ============================  ========  ======================

The alert names are the Prometheus rules' (``infra/prometheus/rules/skyloop.yml``) where one
exists, so a deployment's Alertmanager routes and inhibits both alike; a deployment alerts from
the metrics through its own Prometheus and Alertmanager and needs no webhook here.

Invariants:
- a post never blocks the pipeline: the follower only enqueues (bounded; a full queue drops
  the alert, logged), one poster thread sends, each request bounded by ``webhook_timeout_s``;
- bounded retries: ``webhook_attempts`` tries, 0.5 s doubling to 8 s between them, for
  connection errors, timeouts, 429 and 5xx; another 4xx is final;
- at most once per event id, across restarts: an event id is appended to
  ``<data_dir>/alerts-sent.txt`` once its post was accepted (2xx), and an id found there is
  never posted again (a request that timed out after the receiver took it may still arrive
  twice; Alertmanager-style receivers dedupe by ``fingerprint``, the labels' digest);
- the labels of a resolved alert are those of the alert it resolves, its ``startsAt`` the
  pause's time, its ``endsAt`` the resume's; the open alerts are rebuilt by replaying the log
  (already-sent events are skipped, not forgotten).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.core.config import Settings
from processors.core.events import EventType
from processors.core.kafka import ControlFollower

__all__ = [
    "SENT_FILE",
    "Alert",
    "AlertRouter",
    "SentLog",
    "WebhookPoster",
    "alertmanager_payload",
    "start_run_alerts",
]

log = logging.getLogger(__name__)

SENT_FILE = "alerts-sent.txt"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end" for a firing alert
_BACKOFF_S = (0.5, 8.0)


@dataclass(frozen=True)
class Alert:
    """One alert to post: ``event_id`` is the triggering event's (the idempotency key)."""

    event_id: str
    status: str  # "firing" or "resolved"
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None = None

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.labels, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alertmanager_payload(
    alert: Alert, external_url: str, receiver: str = "skyloop"
) -> dict[str, Any]:
    """The JSON body Alertmanager's webhook receiver sends, for one alert."""
    group = {"alertname": alert.labels["alertname"]}
    return {
        "version": "4",
        "groupKey": "{}:{alertname=" + json.dumps(group["alertname"]) + "}",
        "truncatedAlerts": 0,
        "status": alert.status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": dict(alert.labels),
        "commonAnnotations": dict(alert.annotations),
        "externalURL": external_url,
        "alerts": [
            {
                "status": alert.status,
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": _rfc3339(alert.starts_at),
                "endsAt": _rfc3339(alert.ends_at) if alert.ends_at else ZERO_TIME,
                "generatorURL": external_url,
                "fingerprint": alert.fingerprint,
            }
        ],
    }


@dataclass
class AlertRouter:
    """Control events in, alerts out (pure but for the open alerts it remembers).

    ``route(event)`` returns the alert an event raises or resolves, or None; it must see the
    whole log in order (replays included) so resolves find their pause.
    """

    open: dict[str, Alert] = field(default_factory=dict)  # by fingerprint

    def route(self, event: Mapping[str, Any]) -> Alert | None:
        kind, subject, issued_by = event["type"], str(event["subject"]), str(event["issued_by"])
        params = event.get("params") or {}
        at = event["at"] if isinstance(event["at"], datetime) else datetime.now(UTC)
        reason = str(params.get("reason") or "")
        until = params.get("until")
        notes = {
            "event_id": str(event["event_id"]),
            "issued_by": issued_by,
            **({"reason": reason} if reason else {}),
            **({"until": _rfc3339(until)} if isinstance(until, datetime) else {}),
        }
        if kind == EventType.PIPELINE_PAUSED:
            labels = {"alertname": "SkyloopPipelinePaused", "severity": "page"}
            return self._fire(event, labels, at, notes, f"the pipeline is paused by {issued_by}")
        if kind == EventType.SOURCE_PAUSED and issued_by == "controller":
            labels = {"alertname": "SkyloopSourcePaused", "severity": "ticket", "source": subject}
            return self._fire(event, labels, at, notes, f"source {subject} is backed off")
        if kind == EventType.MODEL_ROLLED_BACK:
            labels = {
                "alertname": "SkyloopModelRolledBack",
                "severity": "page",
                "model_version": subject,
            }
            alert = Alert(
                str(event["event_id"]),
                "firing",
                labels,
                {"summary": f"model {subject} was rolled back", **notes},
                at,
            )
            return alert
        if kind == EventType.PIPELINE_RESUMED:
            return self._resolve(event, {"alertname": "SkyloopPipelinePaused", "severity": "page"})
        if kind == EventType.SOURCE_RESUMED:
            labels = {"alertname": "SkyloopSourcePaused", "severity": "ticket", "source": subject}
            return self._resolve(event, labels)
        return None

    def _fire(
        self,
        event: Mapping[str, Any],
        labels: dict[str, str],
        at: datetime,
        notes: dict[str, str],
        summary: str,
    ) -> Alert:
        alert = Alert(str(event["event_id"]), "firing", labels, {"summary": summary, **notes}, at)
        self.open[alert.fingerprint] = alert
        return alert

    def _resolve(self, event: Mapping[str, Any], labels: dict[str, str]) -> Alert | None:
        fired = self.open.pop(Alert("", "", labels, {}, datetime.now(UTC)).fingerprint, None)
        if fired is None:
            return None  # nothing of ours was firing (e.g. an operator's source pause)
        at = event["at"] if isinstance(event["at"], datetime) else datetime.now(UTC)
        notes = {
            **fired.annotations,
            "event_id": str(event["event_id"]),
            "resolved_by": str(event["issued_by"]),
        }
        return Alert(str(event["event_id"]), "resolved", labels, notes, fired.starts_at, at)


class SentLog:
    """Event ids whose alert was accepted, one per line in ``path`` (appended, never rewritten)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._ids = set(path.read_text().split())
        except FileNotFoundError:
            self._ids = set()

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return event_id in self._ids

    def add(self, event_id: str) -> None:
        with self._lock:
            self._ids.add(event_id)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(event_id + "\n")


class WebhookPoster:
    """Posts alerts from a bounded queue in its own thread; :meth:`observe` never blocks."""

    def __init__(
        self,
        url: str,
        sent: SentLog,
        *,
        external_url: str = "",
        timeout_s: float = 5.0,
        attempts: int = 5,
        backoff_s: tuple[float, float] = _BACKOFF_S,
        capacity: int = 1000,
    ) -> None:
        self.url = url
        self.sent = sent
        self.external_url = external_url
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.router = AlertRouter()
        self.posted = 0
        self.failed = 0
        self._queue: queue.Queue[Alert] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)

    def start(self) -> WebhookPoster:
        self._thread.start()
        return self

    def observe(self, _state: Any, event: Mapping[str, Any]) -> None:
        """A control event (a ControlFollower's ``on_event``): route it, enqueue what is new."""
        try:
            alert = self.router.route(event)
        except (KeyError, TypeError, ValueError):  # never stop the follower over one event
            log.exception("alerts: event %s not routed", event.get("event_id"))
            return
        if alert is None or alert.event_id in self.sent:
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.failed += 1
            log.error("alerts: queue full, alert of event %s dropped", alert.event_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if alert.event_id not in self.sent and self._post(alert):
                    self.sent.add(alert.event_id)
                    self.posted += 1
                elif alert.event_id not in self.sent:
                    self.failed += 1
            finally:
                self._queue.task_done()

    def _post(self, alert: Alert) -> bool:
        body = json.dumps(alertmanager_payload(alert, self.external_url)).encode()
        delay, cap = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if 200 <= response.status < 300:
                        return True
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code != 429:
                    log.error("alerts: %s refused %s: HTTP %d", self.url, alert.event_id, exc.code)
                    return False
                log.warning("alerts: attempt %d: HTTP %d", attempt, exc.code)
            except (OSError, TimeoutError) as exc:  # URLError, refused, reset, timed out
                log.warning("alerts: attempt %d to %s failed: %s", attempt, self.url, exc)
            if attempt < self.attempts and self._stop.wait(delay):
                return False
            delay = min(delay * 2, cap)
        log.error("alerts: gave up on alert %s after %d attempts", alert.event_id, self.attempts)
        return False

    def close(self, drain_s: float = 10.0) -> None:
        """Post what is queued for up to ``drain_s`` seconds, then stop."""
        deadline = time.monotonic() + drain_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1)


def start_run_alerts(
    settings: Settings, bootstrap: str, external_url: str = ""
) -> Callable[[], None] | None:
    """With ``alert_webhook_url`` set: follow ``control.events`` and post its alerts; return
    the function that drains and stops both (None when no webhook is set)."""
    url = settings.alerts.webhook_url
    if url is None:
        return None
    poster = WebhookPoster(
        url,
        SentLog(settings.data_dir / SENT_FILE),
        external_url=external_url,
        timeout_s=settings.alerts.webhook_timeout_s,
        attempts=settings.alerts.webhook_attempts,
    ).start()
    follower = ControlFollower(settings, bootstrap, on_event=poster.observe).start()

    def stop() -> None:
        try:
            follower.wait_caught_up(timeout_s=10)  # the last events (a final resume) are routed
        except Exception as exc:  # the broker is gone: post what was routed
            log.warning("alerts: control log not caught up at the end: %s", exc)
        follower.close()
        poster.close()

    return stop
