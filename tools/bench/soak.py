"""Soak: ``skyloop run --duration`` on an endless stream with a drift every few thousand images.

Usage (from the repository root)::

    python tools/bench/soak.py --duration 30m            # the figure in BENCHMARKS.md
    python tools/bench/soak.py --duration 3m --every 15  # a quick look

Runs the real ``skyloop run`` (every processor a process, the embedded broker) on synthetic
difference cutouts whose condition cycles baseline → noisy (the detector goes blind) →
baseline (a flood) → crowded (a flood) every ``--segment`` images, endlessly. Every ``--every``
seconds it samples each process's resident memory (``/proc/<pid>/status`` VmRSS), the CPU time
of the pipeline's processes and of the whole machine (``/proc``), and the images scored so far
(counted in ClickHouse through the live sink, so a restarted sink does not reset them). At the
end it reports, per process, RSS after warm-up (the first ``--warmup`` fraction of the samples
is left out) as first / last / max and the drift of a least-squares line through it over the
run, in percent; throughput per sample
interval (first and second half of the run); the broker's RSS (``tansu``: what the hot log
holds) and the run's total RSS over the second half, with the hot-log rotations and the
broker's RSS after each (its floor) with the slope of a line through them; and, from
ClickHouse, each drift onset with the
first ``drift.detected`` after it and the first recalibration caused by it (``never`` when
none came before the next onset).

With ``--kill-every S`` it also ``kill -9``s one processor every S seconds, chosen at random
(``--seed``) among the restartable ones (scorer, controller, sink, detector, trainer), the way
an OOM killer or a crash would; the run restarts it and goes on. The end then lists the kills,
and the report always ends with the disk the data dir uses and the run's ledger line (every
ingested image accounted for, from the run's own summary).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

import numpy as np

from processors.cli import duration_seconds
from processors.core.clickhouse import connect
from processors.core.events import EventType
from processors.core.exceptions import SkyloopError
from processors.core.progress import read_progress
from processors.core.warehouse_rows import SinkSql
from tools.bench.procstat import children, cpu_seconds, machine_busy_seconds, rss_mb

__all__ = ["main"]

KILLABLE = ("score", "controller", "sink", "detect", "train")
"""The processors ``--kill-every`` chooses from: those the run restarts (ingest's death ends the
run, and the broker's is the chaos tool's ``--kill-broker``)."""


ROTATED = re.compile(r"hot log: rotated epoch \d+ \(broker \d+ -> (\d+) MB")
"""A rotation's line in the run's output: the broker's RSS after it (its floor)."""


def _trend_pct(values: list[float]) -> float:
    """Change over the run of a least-squares line through ``values``, in % of its mean."""
    y = np.asarray(values, dtype=float)
    if y.size < 3 or y.mean() == 0:
        return 0.0
    slope = np.polyfit(np.arange(y.size), y, 1)[0]
    return float(100.0 * slope * (y.size - 1) / y.mean())


def _hot_log_summary(kept: list[tuple[float, dict[str, float], int]], run_log: Path) -> None:
    """The broker's memory (what the hot log holds: ``tansu``'s RSS) and the run's total RSS
    over the second half of the kept samples, and the rotations the run made."""
    half = kept[len(kept) // 2 :]
    if len(half) < 2:
        return
    broker = [rss.get("tansu", 0.0) for _, rss, _ in half]
    total = [sum(rss.values()) for _, rss, _ in half]
    lines = run_log.read_text().splitlines()
    rotations = sum("hot log: rotated" in line for line in lines)
    floors = [float(m.group(1)) for m in map(ROTATED.search, lines) if m]
    if len(floors) >= 2:
        slope = float(np.polyfit(np.arange(len(floors)), floors, 1)[0])
        print(
            f"broker (tansu) RSS after each rotation (MB): {', '.join(f'{f:.0f}' for f in floors)}"
            f"; slope {slope:+.1f} MB per rotation"
        )
    print(
        f"broker (tansu) RSS, second half (MB): first {broker[0]:.0f}, last {broker[-1]:.0f}, "
        f"max {max(broker):.0f}, trend {_trend_pct(broker):+.1f}%; hot-log rotations {rotations}"
    )
    print(
        f"total RSS, second half (MB): first {total[0]:.0f}, last {total[-1]:.0f}, "
        f"max {max(total):.0f}, growth {100 * (total[-1] - total[0]) / total[0]:+.1f}%, "
        f"trend {_trend_pct(total):+.1f}%; images scored {kept[-1][2]}"
    )


def _kill_one(pid: int, rng: random.Random, t: float) -> str | None:
    """``kill -9`` one restartable processor of the run at random; its description, or None."""
    alive = sorted((name, child) for child, name in children(pid).items() if name in KILLABLE)
    if not alive:
        return None
    name, child = rng.choice(alive)
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return f"t={t:.0f}s kill -9 {name} (pid {child})"


def _scored(run_dir: Path, last: int) -> int:
    """Images scored so far, as ClickHouse counts them (through the live sink): a sink's own
    progress file starts from zero when it is restarted. While the sink is away (restarting),
    its progress file if it is ahead, else the last count: never backwards."""
    try:
        rows = SinkSql(run_dir, timeout_s=2.0).rows(
            "SELECT uniqExact(image_id) AS n FROM scores WHERE role = 'production'"
        )
        return max(last, int(rows[0]["n"]))
    except SkyloopError:
        return max(last, int(read_progress(run_dir / "progress", "sink").get("scores", 0)))


def _disk_mb(path: Path) -> float:
    """Bytes under ``path`` (files only, links not followed), in MB."""
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file() and not entry.is_symlink():
                total += entry.stat().st_size
        except OSError:
            continue
    return total / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="30m")
    parser.add_argument("--segment", type=int, default=3000, help="images per condition")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of samples left out")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--retention-bytes",
        type=int,
        default=None,
        help="the hot log's bound (SKYLOOP_LOG_RETENTION_BYTES; 0: unbounded)",
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=0.0,
        help="seconds between kill -9s of a random restartable processor (0: none)",
    )
    parser.add_argument("--seed", type=int, default=None, help="the kills' random seed")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    kills: list[str] = []
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="skyloop-soak-"))
    seg = args.segment
    source = (
        f"synthetic?kind=difference&anomaly_rate=0.02&drifts={seg}:noisy,{2 * seg}:baseline,"
        f"{3 * seg}:crowded&cycle={4 * seg}"
    )
    cmd = [
        sys.executable,
        "-m",
        "processors.cli",
        "run",
        "--duration",
        args.duration,
        "--source",
        source,
        "--data-dir",
        str(data),
    ]
    print(f"soak: {' '.join(cmd[2:])}", flush=True)
    if args.kill_every:
        print(f"soak: kill -9 of a random processor every {args.kill_every:.0f}s, seed {seed}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.retention_bytes is not None:
        env["SKYLOOP_LOG_RETENTION_BYTES"] = str(args.retention_bytes)
    log = open(data / "soak-run.log", "w") if data.exists() else None  # noqa: SIM115
    if log is None:
        data.mkdir(parents=True)
        log = open(data / "soak-run.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    samples: list[tuple[float, dict[str, float], int]] = []
    cpu: list[tuple[float, float]] = []  # (our processes' CPU s, the machine's busy CPU s)
    started = time.monotonic()
    last_kill = started
    scored = 0
    try:
        while proc.poll() is None:
            time.sleep(args.every)
            now = time.monotonic()
            killing = now - started < duration_seconds(args.duration)
            if args.kill_every and killing and now - last_kill >= args.kill_every:
                last_kill = now
                killed = _kill_one(proc.pid, rng, now - started)
                if killed:
                    kills.append(killed)
                    print(f"soak: {killed}", flush=True)
            latest = data / "latest"
            if not latest.is_file():
                continue
            run_dir = Path(latest.read_text().strip())
            scored = _scored(run_dir, scored)
            kids = children(proc.pid)
            rss = {name: rss_mb(pid) for pid, name in kids.items()}
            cpu.append((sum(cpu_seconds(p) for p in [proc.pid, *kids]), machine_busy_seconds()))
            rss["supervisor"] = rss_mb(proc.pid)
            clean = {k: v for k, v in rss.items() if v is not None}
            samples.append((time.monotonic() - started, clean, scored))
            print(
                json.dumps(
                    {
                        "t": round(samples[-1][0]),
                        "scored": samples[-1][2],
                        "rss_mb": {k: round(v) for k, v in clean.items()},
                    }
                ),
                flush=True,
            )
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        log.close()
    run_dir = Path((data / "latest").read_text().strip())
    # Warm-up left out, and any sample after the run's duration: ingest has stopped by then, so
    # the interval that spans the shutdown is not a throughput the pipeline had.
    run_s = duration_seconds(args.duration)
    warm = int(len(samples) * args.warmup)
    in_run = [i for i, (t, _, _) in enumerate(samples) if t <= run_s]
    kept = samples[warm : (in_run[-1] + 1 if in_run else 0)]
    print(
        f"\nsoak finished in {time.monotonic() - started:.0f}s, exit {proc.returncode}; "
        f"{len(samples)} samples, {len(kept)} after warm-up; run {run_dir}"
    )
    print("RSS after warm-up (MB): process  first  last  max  trend")
    for name in sorted({n for _, rss, _ in kept for n in rss}):
        series = [rss[name] for _, rss, _ in kept if name in rss]
        if len(series) >= 2:
            print(
                f"  {name:<10} {series[0]:7.0f} {series[-1]:6.0f} {max(series):6.0f} "
                f"{_trend_pct(series):+6.1f}%"
            )
    _hot_log_summary(kept, data / "soak-run.log")
    rates = [(b[2] - a[2]) / (b[0] - a[0]) for a, b in itertools.pairwise(kept) if b[0] > a[0]]
    if rates:
        half = len(rates) // 2 or 1
        print(
            f"throughput (images/s per interval): first half {np.mean(rates[:half]):.1f}, "
            f"second half {np.mean(rates[half:]):.1f}, trend {_trend_pct(rates):+.1f}%"
        )
    # Per CPU second of the pipeline's own processes: what the machine's other load cannot move.
    kept_cpu = cpu[warm : warm + len(kept)]
    pairs = list(zip(kept, kept_cpu, strict=False))
    per_cpu, foreign = [], []
    for (a, ca), (b, cb) in itertools.pairwise(pairs):
        ours, busy, wall = cb[0] - ca[0], cb[1] - ca[1], b[0] - a[0]
        if ours > 0 and wall > 0:
            per_cpu.append((b[2] - a[2]) / ours)
            foreign.append(max(0.0, busy - ours) / wall)
    if per_cpu:
        half = len(per_cpu) // 2 or 1
        print(
            f"images per CPU second of the pipeline: first half {np.mean(per_cpu[:half]):.2f}, "
            f"second half {np.mean(per_cpu[half:]):.2f}, trend {_trend_pct(per_cpu):+.1f}%; "
            f"other load on the machine {np.mean(foreign):.2f} cores (min {min(foreign):.2f}, "
            f"max {max(foreign):.2f})"
        )
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:
        onsets = client.query(
            "SELECT n, seg FROM (SELECT toUInt64(provenance['n']) AS n, truth_segment AS seg, "
            "lagInFrame(truth_segment) OVER (ORDER BY toUInt64(provenance['n'])) AS prev "
            "FROM images FINAL) WHERE prev != '' AND seg != prev ORDER BY n"
        ).result_rows
        scored_at: dict[int, Any] = {
            n: at
            for n, at in client.query(
                "SELECT toUInt64(provenance['n']), max(s.scored_at) FROM images AS i FINAL "
                "JOIN scores AS s FINAL ON s.image_id = i.image_id GROUP BY 1"
            ).result_rows
        }
        events = client.query(
            "SELECT at, type, event_id, caused_by FROM control_events FINAL "
            "WHERE type IN ('drift.detected', 'calibration.updated') ORDER BY kafka_offset"
        ).result_rows
    finally:
        client.close()
    drifts = [(at, eid) for at, kind, eid, _ in events if kind == EventType.DRIFT_DETECTED]
    print(f"drift onsets {len(onsets)}, drift.detected {len(drifts)}")
    corrected = 0
    for k, (n, seg) in enumerate(onsets):
        start = scored_at.get(n)
        end = scored_at.get(onsets[k + 1][0]) if k + 1 < len(onsets) else None
        if start is None:
            continue
        found = [(at, eid) for at, eid in drifts if at >= start and (end is None or at < end)]
        fix = None
        if found:
            fix = next(
                (
                    at
                    for at, kind, _, caused in events
                    if kind == EventType.CALIBRATION_UPDATED and found[0][1] in caused
                ),
                None,
            )
        corrected += fix is not None
        detected = "never" if not found else f"{(found[0][0] - start).total_seconds():.1f}s later"
        fixed = "never" if fix is None else f"{(fix - start).total_seconds():.1f}s later"
        print(f"  image {n} → {seg}: detected {detected}, recalibrated {fixed}")
    print(f"corrected {corrected} of {len(onsets)} drifts")
    if args.kill_every:
        print(f"kills ({len(kills)}, seed {seed}):")
        for line in kills:
            print(f"  {line}")
    run_log = (data / "soak-run.log").read_text().splitlines()
    for line in run_log:
        if "restarts" in line.lower() and "restarted" not in line:
            print(line.strip())
    print(f"disk used by the data dir: {_disk_mb(data):.0f} MB")
    ledger = [line.strip() for line in run_log if line.strip().startswith("ledger:")]
    print(ledger[-1] if ledger else "ledger: (no ledger line in the run's output)")
    return proc.returncode or 0


if __name__ == "__main__":
    raise SystemExit(main())
