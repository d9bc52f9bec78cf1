"""One fault injected into a real ``skyloop run``, and what it cost.

Each scenario starts ``skyloop run --images N`` in its own data folder
(:class:`~tools.chaos.live.LiveRun`), reads every message of its topics back while it runs (the
tap), waits until a third of the images have a production score (mid-stream, mid-batch),
injects its fault, lets the run finish and then judges it with :mod:`tools.chaos.checker`
(which defines each word below precisely):

- images in: distinct images ingest published (its ledger); images out: those with a production
  score stored;
- duplicates: copies of a record that no disruption explains, and images served twice (must be
  0); losses: ledger images without their stored outputs (must be 0);
- redelivered: copies explained by a disruption (at-least-once, allowed), of which rescored:
  those that served another output than the first copy;
- seconds to recover: from the fault until the restarted processor is ready again (kills),
  until every partition the killed scorer held is scored again (rebalance), or until the scorer
  scores again (broker). A recovery slower than :data:`RECOVERY_TARGET_S` fails the scenario.

Faults: ``kill-score``, ``kill-detect``, ``kill-sink``, ``kill-stats`` (SIGKILL; ``stats`` is the
controller worker's former name, kept for the fault table), ``poison``
(undecodable bytes on every topic: each must end as a dead letter or a logged skip, the run
unharmed), ``rebalance`` (a second scorer joins the group and must score with partitions of its
own before it is killed, else the scenario fails), ``kill-broker`` (SIGKILL of the durable
embedded broker, ``broker_durable``: the run starts it again on its storage and every client
reconnects), ``poison-crash`` (:mod:`tools.chaos.poison_crash`: a valid record that kills the
scorer every time, quarantined; it still counts from ClickHouse on its own, not through the
checker). The randomized schedule is :mod:`tools.chaos.schedule`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from processors.core.progress import read_progress
from processors.topology import resolve
from tools.chaos.checker import Verdict
from tools.chaos.live import LiveRun, chaos_env, worker_pid

__all__ = ["FAULTS", "RECOVERY_TARGET_S", "Outcome", "outcome", "run_scenario", "worker_pid"]

FAULTS = (
    "kill-score",
    "kill-detect",
    "kill-sink",
    "kill-stats",
    "kill-broker",
    "poison",
    "rebalance",
    "poison-crash",  # tools/chaos/poison_crash.py
)
POISON = b"\x00not avro: chaos"
RECOVERY_TARGET_S = 15.0
"""Every recovery must take at most this long (ARCHITECTURE.md, "The local stack")."""


@dataclass(frozen=True)
class Outcome:
    fault: str
    images_in: int
    images_out: int
    duplicates: int
    losses: int
    redelivered: int
    recover_s: float | None
    exit_code: int
    notes: str = ""
    rescored: int = 0
    failures: tuple[str, ...] = ()
    """Requirements the scenario did not meet (a slow recovery, a scorer without partitions, an
    incomplete tap), and the checker's first findings."""

    @property
    def clean(self) -> bool:
        return (
            self.exit_code == 0
            and self.duplicates == 0
            and self.losses == 0
            and self.images_out == self.images_in
            and not self.failures
        )


def _poison(run_dir: Path, topics: Iterable[str] | None = None, tag: str = "") -> int:
    """Undecodable bytes, keyed ``chaos-<topic><tag>``, on ``topics`` (default: every topic).

    On ``images.raw`` the poison has no key: the run's ledger (``processors/report/ledger.py``)
    counts every keyed ``images.raw`` dead letter as an image, and one ingest never published
    makes it report a double count and ``skyloop run`` exit 1."""
    from confluent_kafka import Producer

    from processors.core.records import TOPICS

    stack = json.loads((run_dir / "stack.json").read_text())
    producer = Producer({"bootstrap.servers": stack["bootstrap"], "linger.ms": 0})
    bases = list(TOPICS if topics is None else topics)
    for base in bases:
        producer.produce(
            f"{stack['topic_prefix']}{base}",
            key=None if base == "images.raw" else f"chaos-{base}{tag}".encode(),
            value=POISON,
            partition=0,
        )
    producer.flush(30)
    return len(bases)


def _extra_scorer(run_dir: Path, marker: str, logs: Path) -> subprocess.Popen[bytes]:
    stack = json.loads((run_dir / "stack.json").read_text())
    env = {
        **chaos_env(marker),
        "SKYLOOP_CHAOS_EXTRA": "1",
        "SKYLOOP_BOOTSTRAP_SERVERS": stack["bootstrap"],
        "SKYLOOP_TOPIC_PREFIX": stack["topic_prefix"],
        "SKYLOOP_DATA_DIR": str(run_dir),
        "SKYLOOP_PROGRESS_DIR": str(run_dir / "chaos-progress"),
    }
    with open(logs, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "processors.cli", "worker", "score"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_scenario(
    fault: str,
    images: int,
    work: Path,
    timeout_s: float = 900.0,
    recovery_target_s: float = RECOVERY_TARGET_S,
) -> Outcome:
    """Run ``skyloop run`` with ``fault`` injected; see the module docstring for the counts."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; accepted: {', '.join(FAULTS)}")
    if fault == "poison-crash":
        from tools.chaos.poison_crash import poison_crash

        return poison_crash(images, work, timeout_s)
    run = LiveRun(work, images, durable=fault == "kill-broker")
    recover_s: float | None = None
    notes, failures = "", list[str]()
    extra: subprocess.Popen[bytes] | None = None
    try:
        run.start()
        run_dir = run.run_dir
        if fault == "rebalance":  # early: it loads its model while the run's workers do
            extra = _extra_scorer(run_dir, run.marker, run_dir / "logs" / "score-extra.log")
            joined_at = time.time()
        run.wait(lambda: run.scored() >= images // 3, timeout_s)
        t0, wall0 = time.monotonic(), time.time()
        if fault == "kill-broker":
            pid = run.pid("broker")
            if pid is None:
                raise RuntimeError("no live broker to kill")
            before = run.scored()
            os.kill(pid, signal.SIGKILL)
            if run.wait(lambda: run.scored() > before + 16, 300):
                recover_s = time.monotonic() - t0
            notes = "durable broker"
        elif fault.startswith("kill-"):
            name = resolve(fault.removeprefix("kill-")).name
            pid = run.pid(name)
            if pid is None:
                raise RuntimeError(f"no live {name} worker to kill")
            os.kill(pid, signal.SIGKILL)
            if run.wait(lambda: run.ready_since(name, pid, wall0), 300):
                recover_s = time.monotonic() - t0
        elif fault == "poison":
            notes = f"{_poison(run_dir)} poison messages"
        elif fault == "rebalance":
            assert extra is not None
            recover_s, notes = _rebalance(run, extra, joined_at, failures)
        if fault != "poison" and recover_s is None:
            failures.append(f"{fault}: no recovery observed")
        elif recover_s is not None and recover_s > recovery_target_s:
            failures.append(f"recovery {recover_s:.1f} s over the {recovery_target_s:.0f} s target")
        code = run.finish(timeout_s)
    finally:
        if extra is not None and extra.poll() is None:
            extra.kill()
            extra.wait()
        run.close()
    return outcome(fault, run, code, recover_s, notes, failures)


def _rebalance(
    run: LiveRun, extra: subprocess.Popen[bytes], joined_at: float, failures: list[str]
) -> tuple[float | None, str]:
    """Require the second scorer to score with partitions of its own, kill it, and time until
    every partition scored in the last seconds before the kill is scored again."""

    def extra_scored() -> int:
        return int(read_progress(run.run_dir / "chaos-progress", "score").get("scored", 0))

    run.wait(lambda: extra_scored() >= 16, 300)
    got = extra_scored()
    run.monitor.add("score", joined_at, time.time(), "second scorer joined")
    if got == 0:
        failures.append("second scorer got no partition (scored nothing) before the kill")
        return None, "second scorer scored 0"
    kill_wall, t0 = time.time(), time.monotonic()
    assert run.tap is not None
    recent = {
        s.partition
        for s in run.tap.snapshot()
        if s.topic == "scores" and s.produced_ms / 1000 > kill_wall - 10
    }
    extra.send_signal(signal.SIGKILL)
    extra.wait(30)
    after = dict.fromkeys(recent, kill_wall)
    recovered = run.wait(lambda: run.tap is not None and run.tap.scored_after(after) == recent, 300)
    run.monitor.add("score", kill_wall, time.time(), "second scorer killed")
    recover_s = time.monotonic() - t0 if recovered and recent else None
    return recover_s, f"second scorer scored {got}; partitions {sorted(recent)} scored again"


def outcome(
    fault: str,
    run: LiveRun,
    code: int,
    recover_s: float | None,
    notes: str,
    failures: list[str],
) -> Outcome:
    """Judge the finished run (:func:`tools.chaos.checker.check`) into a table row."""
    verdict: Verdict = run.verdict()
    extra = _notes(fault, run)
    if verdict.tap_missing:
        failures.append(f"the tap missed {verdict.tap_missing} stored messages")
    failures.extend(d for d in verdict.details if not d.startswith("the tap"))
    restarts = [line.strip() for line in run.stdout.read_text().splitlines() if "restarts:" in line]
    notes = ", ".join(filter(None, [notes, extra, *restarts[:1]]))
    if verdict.copies_before_final:
        notes += f", {verdict.copies_before_final} stored copies merged by FINAL"
    return Outcome(
        fault,
        verdict.images_in,
        verdict.images_out,
        verdict.duplicates,
        verdict.losses,
        verdict.redelivered,
        recover_s,
        code,
        notes,
        verdict.rescored,
        tuple(failures),
    )


def _notes(fault: str, run: LiveRun) -> str:
    """What a fault adds to its row, read from the run's ClickHouse."""
    if fault != "poison":
        return ""
    from processors.core.clickhouse import connect

    client = connect(f"chdb://{(run.run_dir / 'clickhouse').resolve()}")
    try:
        topics = client.query(
            "SELECT uniqExact(original_topic) FROM dead_letters FINAL "
            "WHERE position(raw, 'chaos') > 0"
        ).result_rows[0][0]
    finally:
        client.close()
    return f"dead letters for {topics} topics"
