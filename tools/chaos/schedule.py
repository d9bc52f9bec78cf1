"""A randomized fault schedule: many faults of several kinds in one ``skyloop run``.

``python -m tools.chaos --schedule random --faults 20 [--seed S]``. :func:`plan` draws, from the
seed alone, a list of faults, each one of

- ``kill``: SIGKILL of a random worker (``sink``, ``controller``, ``detect``, ``train``,
  ``score``); its recovery is timed until the restarted process is ready again;
- ``pause``: SIGSTOP of a random worker for 0.5-8 s, then SIGCONT (past the 6 s session timeout
  the group evicts it, and what it had in hand is redelivered);
- ``poison``: undecodable bytes on a random topic;
- ``kill-broker``: only with ``kill_broker`` (off by default), and then on the durable broker:
  the memory broker's death ends the run by design, and surviving it is other work.

Fault ``i`` of ``n`` fires once ``0.1 + 0.75 i / (n - 1)`` of the images have a production score
(read from the topic, so restarts do not reset it), so every fault lands mid-run whatever the
machine's speed. A worker is never disrupted more than :data:`MAX_DISRUPTIONS` times (the
supervisor ends the run after 5 restarts in 5 minutes), never killed while it is paused or not
yet back from a kill. Faults overlap: a kill may land while another worker restarts. Every
recovery is timed; one that overlapped no other kill's recovery is held to the target, and
overlapping ones are reported (on 2 cores, a scorer restarting while two other workers also
restarted took 16.9 s: that measures the contention, not the recovery). The same seed
gives the same faults in the same order at the same points of progress; timing within the run
still varies. The run is judged by the same checker as every
scenario (:mod:`tools.chaos.checker`), and each recovery against the same target.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from processors.core.records import TOPICS
from tools.chaos.live import WORKERS, LiveRun
from tools.chaos.scenarios import RECOVERY_TARGET_S, Outcome, _poison, outcome

__all__ = ["MAX_DISRUPTIONS", "Fault", "plan", "run_faults", "run_schedule"]

MAX_DISRUPTIONS = 3
KINDS = {"kill": 0.4, "pause": 0.4, "poison": 0.2}
LONG_PAUSE_S = 5.0
"""A pause this long may cost the worker its group membership (and a restart)."""


@dataclass(frozen=True)
class Fault:
    at: float
    """Fraction of the images with a production score when it fires."""
    kind: str
    target: str
    """A worker, ``broker``, or (poison) a topic."""
    pause_s: float = 0.0

    def __str__(self) -> str:
        pause = f" {self.pause_s:.1f}s" if self.kind == "pause" else ""
        return f"{self.kind} {self.target}{pause} @{self.at:.2f}"


def plan(seed: int, faults: int, kill_broker: bool = False) -> list[Fault]:
    """The schedule for ``seed``: deterministic, see the module docstring."""
    rng = random.Random(seed)
    kinds = dict(KINDS, **({"kill-broker": 0.1} if kill_broker else {}))
    budget: Counter[str] = Counter()
    out: list[Fault] = []
    for i in range(faults):
        at = 0.1 + 0.75 * (i / (faults - 1) if faults > 1 else 0.0)
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        if kind == "poison":
            out.append(Fault(at, kind, rng.choice(sorted(TOPICS))))
            continue
        if kind == "kill-broker":
            out.append(Fault(at, kind, "broker"))
            continue
        pause_s = round(rng.uniform(0.5, 8.0), 1) if kind == "pause" else 0.0
        costly = kind == "kill" or pause_s > LONG_PAUSE_S
        choices = [w for w in WORKERS if not costly or budget[w] < MAX_DISRUPTIONS]
        target = rng.choice(choices)
        budget[target] += costly
        out.append(Fault(at, kind, target, pause_s))
    return out


class _Schedule:
    """The live state of a schedule: pending resumes and recoveries."""

    def __init__(self, run: LiveRun) -> None:
        self.run = run
        self.paused: dict[str, tuple[int, float, float]] = {}  # worker -> (pid, until, from)
        self.recovering: dict[str, tuple[int, float, float]] = {}  # (old pid, t0, wall0)
        self.recoveries: list[tuple[str, float, float | None]] = []  # (worker, t0, seconds)

    def tick(self) -> None:
        now = time.monotonic()
        for worker, (pid, until, stopped) in list(self.paused.items()):
            if now >= until:
                _signal(pid, signal.SIGCONT)
                self.run.monitor.add(worker, stopped, time.time(), f"{worker} paused")
                del self.paused[worker]
        for worker, (pid, t0, wall0) in list(self.recovering.items()):
            if worker == "broker":
                done = self.run.scored() > pid  # pid holds the count scored at the kill
            else:
                done = self.run.ready_since(worker, pid, wall0)
            if done:
                self.recoveries.append((worker, t0, time.monotonic() - t0))
                del self.recovering[worker]
            elif now - t0 > 300:
                self.recoveries.append((worker, t0, None))
                del self.recovering[worker]

    def wait(self, predicate: object, timeout_s: float) -> bool:
        def ticking() -> bool:
            self.tick()
            return bool(predicate())  # type: ignore[operator]

        return self.run.wait(ticking, timeout_s)

    def inject(self, fault: Fault) -> bool:
        run = self.run
        if fault.kind == "poison":
            _poison(run.run_dir, [fault.target], tag=f"-{time.time_ns()}")
            return True
        worker = fault.target
        # one disruption of a worker at a time: wait until it is back and running
        if not self.wait(
            lambda: (
                worker not in self.paused
                and worker not in self.recovering
                and run.pid(worker) is not None
            ),
            120,
        ):
            return False
        pid = run.pid(worker)
        if pid is None:
            return False
        if fault.kind == "pause":
            _signal(pid, signal.SIGSTOP)
            self.paused[worker] = (pid, time.monotonic() + fault.pause_s, time.time())
            return True
        mark = run.scored() + 16 if worker == "broker" else pid
        _signal(pid, signal.SIGKILL)
        self.recovering[worker] = (mark, time.monotonic(), time.time())
        return True

    def release(self) -> None:
        for pid, _until, _from in self.paused.values():
            _signal(pid, signal.SIGCONT)
        self.paused.clear()


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def run_schedule(
    faults: int,
    images: int,
    work: Path,
    seed: int,
    *,
    kill_broker: bool = False,
    recovery_target_s: float = RECOVERY_TARGET_S,
    timeout_s: float = 1200.0,
) -> Outcome:
    """Run ``skyloop run --images N`` under :func:`plan` ``(seed, faults)``; one table row."""
    schedule = plan(seed, faults, kill_broker)
    return run_faults(
        schedule,
        images,
        work,
        f"random x{faults}",
        f"seed {seed}",
        durable=kill_broker,
        recovery_target_s=recovery_target_s,
        timeout_s=timeout_s,
    )


def run_faults(
    schedule: list[Fault],
    images: int,
    work: Path,
    label: str,
    about: str = "",
    *,
    durable: bool = False,
    recovery_target_s: float = RECOVERY_TARGET_S,
    timeout_s: float = 1200.0,
) -> Outcome:
    """Run ``skyloop run --images N`` under a given list of faults (a plan, or one written by
    hand: every worker killed once, say); one table row labelled ``label``."""
    (work / "schedule.txt").parent.mkdir(parents=True, exist_ok=True)
    (work / "schedule.txt").write_text("".join(f"{f}\n" for f in schedule))
    run = LiveRun(work, images, durable=durable)
    state = _Schedule(run)
    failures: list[str] = []
    injected: Counter[str] = Counter()
    try:
        run.start()
        for fault in schedule:
            state.wait(lambda f=fault: run.scored() >= f.at * images, timeout_s)
            if not run.alive():
                break
            try:
                if state.inject(fault):
                    injected[fault.kind] += 1
            except (FileNotFoundError, ProcessLookupError):  # the run ended meanwhile
                break
        state.wait(lambda: not state.paused and not state.recovering, 600)
        state.release()
        code = run.finish(timeout_s)
    finally:
        state.release()
        run.close()
    done = sum(injected.values())
    if done < len(schedule):
        failures.append(f"only {done} of {len(schedule)} faults injected before the run ended")
    spans = [(t0, t0 + (s if s is not None else 300.0)) for _, t0, s in state.recoveries]
    alone = [
        all(b <= t0 or a >= spans[i][1] for j, (a, b) in enumerate(spans) if j != i)
        for i, (_, t0, _) in enumerate(state.recoveries)
    ]
    for (worker, _, seconds), isolated in zip(state.recoveries, alone, strict=True):
        if seconds is None:
            failures.append(f"kill {worker}: no recovery observed")
        elif seconds > recovery_target_s and isolated:
            failures.append(
                f"kill {worker}: recovery {seconds:.1f} s over the {recovery_target_s:.0f} s target"
            )
    times = [s for _, _, s in state.recoveries if s is not None]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(injected.items()))
    recoveries = " ".join(
        f"{w} {s:.1f}{'' if a else '*'}"
        for (w, _, s), a in zip(state.recoveries, alone, strict=True)
        if s is not None
    )
    notes = f"{about}: {kinds}; recoveries s (* overlapped): {recoveries or '-'}".lstrip(": ")
    return outcome(label, run, code, max(times) if times else None, notes, failures)
