"""Alerts on a local run, against a local HTTP server standing in for a person's receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from processors.core.alerts import SENT_FILE, SentLog, WebhookPoster, start_run_alerts
from processors.core.config import Settings
from processors.core.events import EventType, new_event
from processors.core.kafka import ensure_topics, make_producer, produce_control_event
from processors.core.records import ControlParams

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Receiver:
    """A webhook receiver: ``script`` gives each request's fate in turn (an HTTP status, or
    "hang" to never answer); after it runs out every request gets 200."""

    def __init__(self, *script: int | str) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                fate = receiver.script.pop(0) if receiver.script else 200
                if fate == "hang":
                    receiver.release.wait(30)
                    return
                if fate == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(int(fate))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def wait(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.bodies) < n:
            assert time.monotonic() < deadline, f"{len(self.bodies)} of {n} alerts arrived"
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _pause(subject: str = "pipeline", **kw: Any) -> Any:
    kind = EventType.PIPELINE_PAUSED if subject == "pipeline" else EventType.SOURCE_PAUSED
    return new_event(kind, subject, "controller", {"reason": "dead letters"}, at=AT, **kw)


def test_a_pause_fires_and_its_resume_resolves_in_alertmanager_format(
    receiver: Receiver, tmp_path: Path
) -> None:
    poster = WebhookPoster(receiver.url, SentLog(tmp_path / SENT_FILE), external_url="file:///r")
    poster.start()
    resume = new_event(EventType.PIPELINE_RESUMED, "pipeline", "controller", at=AT + timedelta(1))
    for event in (_pause(), resume):
        poster.observe(None, event)
    receiver.wait(2)
    poster.close()
    firing, resolved = receiver.bodies
    for body in (firing, resolved):
        assert body["version"] == "4" and body["externalURL"] == "file:///r"
        assert set(body) >= {"groupKey", "receiver", "groupLabels", "commonLabels", "alerts"}
        assert body["groupLabels"] == {"alertname": "SkyloopPipelinePaused"}
        (alert,) = body["alerts"]
        assert set(alert) >= {"labels", "annotations", "startsAt", "endsAt", "fingerprint"}
        assert alert["labels"] == {"alertname": "SkyloopPipelinePaused", "severity": "page"}
        assert alert["startsAt"] == "2026-12-01T12:00:00Z"
    assert firing["status"] == "firing" and firing["alerts"][0]["endsAt"].startswith("0001")
    assert resolved["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2026-12-02T12:00:00Z"
    assert resolved["alerts"][0]["fingerprint"] == firing["alerts"][0]["fingerprint"]
    assert firing["alerts"][0]["annotations"]["reason"] == "dead letters"


def test_500_then_200_is_retried_and_posted_once(tmp_path: Path) -> None:
    receiver = Receiver(500, 503, 200)
    try:
        sent = SentLog(tmp_path / SENT_FILE)
        poster = WebhookPoster(receiver.url, sent, backoff_s=(0.05, 0.1)).start()
        event = _pause()
        poster.observe(None, event)
        receiver.wait(1)
        poster.observe(None, event)  # the same event again (a replay): not posted again
        poster.close()
        assert receiver.requests == 3 and len(receiver.bodies) == 1
        assert (tmp_path / SENT_FILE).read_text().split() == [event["event_id"]]
        # a restarted run remembers: the same event id is never posted again
        again = WebhookPoster(receiver.url, SentLog(tmp_path / SENT_FILE)).start()
        again.observe(None, event)
        again.close()
        assert receiver.requests == 3
    finally:
        receiver.close()


def test_a_hanging_receiver_never_blocks_the_caller_and_is_given_up(tmp_path: Path) -> None:
    receiver = Receiver(*["hang"] * 500)
    try:
        poster = WebhookPoster(
            receiver.url,
            SentLog(tmp_path / SENT_FILE),
            timeout_s=0.3,
            attempts=2,
            backoff_s=(0.05, 0.1),
        ).start()
        started = time.monotonic()
        for i in range(50):
            poster.observe(None, _pause(f"src{i}"))  # source back-offs, each its own alert
        assert time.monotonic() - started < 0.5, "observe blocked on the receiver"
        poster.close(drain_s=1.0)
        assert time.monotonic() - started < 5, "close did not bound the drain"
        assert poster.posted == 0 and not (tmp_path / SENT_FILE).exists()
        assert receiver.requests >= 2
    finally:
        receiver.close()


def test_a_4xx_is_final_and_an_operator_source_pause_is_not_paged(tmp_path: Path) -> None:
    receiver = Receiver(400)
    try:
        poster = WebhookPoster(receiver.url, SentLog(tmp_path / SENT_FILE)).start()
        operator = new_event(EventType.SOURCE_PAUSED, "sky", "operator:ana", at=AT)
        poster.observe(None, operator)
        poster.observe(None, new_event(EventType.SOURCE_RESUMED, "sky", "operator:ana", at=AT))
        poster.observe(None, _pause())
        poster.close()
        assert receiver.requests == 1 and poster.failed == 1
    finally:
        receiver.close()


THRESHOLD: ControlParams = {"detector": "knn", "value": 0.9}


def test_the_run_follower_posts_pauses_back_offs_and_rollbacks_from_the_log_once(
    kafka_bootstrap: str, settings: Settings, receiver: Receiver
) -> None:
    settings = settings.model_copy(update={"alert_webhook_url": receiver.url})
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    events = [
        _pause(),
        _pause("ztf"),
        # the fold refuses a rollback of a version never registered (processors.core.fold_guard)
        new_event(EventType.MODEL_REGISTERED, "m2", "operator:ana", at=AT),
        new_event(EventType.MODEL_ROLLED_BACK, "m2", "controller", {"reason": "ks"}, at=AT),
        new_event(EventType.SOURCE_RESUMED, "ztf", "controller", at=AT + timedelta(minutes=1)),
        new_event(EventType.THRESHOLD_SET, "sky", "operator:ana", THRESHOLD, at=AT),
    ]
    for event in events:
        produce_control_event(producer, settings, event)
    stop = start_run_alerts(settings, kafka_bootstrap, "file:///run")
    assert stop is not None
    receiver.wait(4)
    stop()
    kinds = [(b["status"], b["alerts"][0]["labels"]["alertname"]) for b in receiver.bodies]
    assert kinds == [
        ("firing", "SkyloopPipelinePaused"),
        ("firing", "SkyloopSourcePaused"),
        ("firing", "SkyloopModelRolledBack"),
        ("resolved", "SkyloopSourcePaused"),
    ]
    assert receiver.bodies[1]["alerts"][0]["labels"]["source"] == "ztf"
    # a second follower over the same log and data dir (a restart) posts nothing again, but
    # still resolves the pause that is open when its resume arrives
    stop = start_run_alerts(settings, kafka_bootstrap, "file:///run")
    assert stop is not None
    resume = new_event(EventType.PIPELINE_RESUMED, "pipeline", "operator:ana", at=AT)
    produce_control_event(producer, settings, resume)
    receiver.wait(5)
    stop()
    assert len(receiver.bodies) == 5 and receiver.bodies[4]["status"] == "resolved"
    assert receiver.bodies[4]["alerts"][0]["annotations"]["resolved_by"] == "operator:ana"


def test_no_webhook_no_follower(settings: Settings) -> None:
    assert start_run_alerts(settings, "127.0.0.1:1") is None
