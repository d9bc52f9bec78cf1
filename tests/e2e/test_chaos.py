"""Every fault scenario of tools/chaos against a real `skyloop run`: nothing lost, nothing twice.

Slow (a full run each, about 90 s here): marked ``chaos`` so CI can run them as their own step
(``pytest -m chaos``). The scorer's kill has its own, more detailed test in test_faults.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.chaos.__main__ import format_table
from tools.chaos.scenarios import FAULTS, run_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "kill-score"])
def test_fault_loses_nothing_and_duplicates_nothing(fault: str, tmp_path: Path) -> None:
    outcome = run_scenario(fault, 160, tmp_path)
    table = format_table([outcome])
    assert outcome.exit_code == 0, f"{table}\nsee {tmp_path}"
    assert outcome.images_in == 160
    assert outcome.images_out == outcome.images_in, table
    assert outcome.duplicates == 0, table
    assert outcome.losses == 0, table
    if fault.startswith("kill-"):
        assert outcome.recover_s is not None, table
        assert f"restarts: {fault.removeprefix('kill-')} 1" in outcome.notes, table
    if fault == "poison":
        assert "dead letters for 5 topics" in outcome.notes, table
