"""Every fault scenario of tools/chaos, and a randomized schedule, against a real `skyloop run`.

Each run is judged by the checker of tools/chaos (every record read back from the topics):
nothing lost, nothing produced twice that no disruption explains, nothing served twice, every
recovery within the 15 s target, and the rebalance only counts when the second scorer scored.
Slow (a full run each, 50-100 s here): marked ``chaos`` so CI runs them as their own step
(``pytest -m chaos``). The scorer's kill has its own, more detailed test in test_faults.py;
the other kills and the poison run together in one run; ``python -m tools.chaos`` runs each
scenario on its own.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from processors.core.clickhouse import connect
from processors.core.records import TOPICS
from tools.chaos.__main__ import format_table
from tools.chaos.scenarios import run_scenario
from tools.chaos.schedule import Fault, run_faults, run_schedule

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.mark.parametrize("fault", ["rebalance", "kill-broker", "poison-crash"])
def test_fault_loses_nothing_and_duplicates_nothing(fault: str, tmp_path: Path) -> None:
    outcome = run_scenario(fault, 160, tmp_path)
    table = format_table([outcome]) + "".join(f"\n{f}" for f in outcome.failures)
    assert outcome.exit_code == 0, f"{table}\nsee {tmp_path}"
    assert outcome.images_in == 160
    assert outcome.clean, table
    assert outcome.recover_s is not None, table
    if fault == "rebalance":
        assert "second scorer scored" in outcome.notes, table


def test_every_worker_killed_once_and_poison_on_every_topic(tmp_path: Path) -> None:
    """The scenarios kill-detect, kill-sink, kill-stats, kill-train and poison in one run (one
    run instead of five keeps ``pytest -m chaos`` within minutes); each recovery is timed and
    held to the target as in its own scenario. The scorer's kill is test_faults.py's."""
    schedule = [
        Fault(0.15, "kill", "detect"),
        *(Fault(0.2, "poison", topic) for topic in sorted(TOPICS)),
        Fault(0.3, "kill", "sink"),
        Fault(0.45, "kill", "controller"),
        Fault(0.6, "kill", "train"),
        Fault(0.7, "pause", "score", 3.0),
    ]
    outcome = run_faults(schedule, 160, tmp_path, "kill each + poison")
    table = format_table([outcome]) + "".join(f"\n{f}" for f in outcome.failures)
    assert outcome.clean, f"{table}\nsee {tmp_path}"
    restarts = outcome.notes.split("restarts: ")[-1].split(", ")
    for worker in ("detect", "sink", "controller", "train"):
        assert f"{worker} 1" in restarts, table  # restarted once, its recovery timed
    run_dir = Path((tmp_path / "data" / "latest").read_text().strip())
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:
        topics = client.query(
            "SELECT uniqExact(original_topic) FROM dead_letters FINAL "
            "WHERE position(raw, 'chaos') > 0"
        ).result_rows[0][0]
    finally:
        client.close()
    assert topics == len(TOPICS), (
        f"poison dead-lettered for {topics} of {len(TOPICS)} topics\n{table}"
    )


def test_random_schedule_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    # A fixed schedule by default, so the suite passes or fails the same way on every run (a
    # random one found a real hang, see BENCHMARKS "Faults and recovery"); SKYLOOP_CHAOS_SEED=random
    # draws a new one, any other value replays that seed.
    chosen = os.environ.get("SKYLOOP_CHAOS_SEED", "1615119886")
    seed = random.SystemRandom().randrange(2**31) if chosen == "random" else int(chosen)
    outcome = run_schedule(6, 160, tmp_path, seed)
    table = format_table([outcome]) + "".join(f"\n{f}" for f in outcome.failures)
    replay = f"replay: python -m tools.chaos --schedule random --faults 6 --seed {seed}"
    assert outcome.clean, f"{table}\n{replay}\nsee {tmp_path}"
