"""Session fixtures of the controller tests: one score stream and one clean worker run over it."""

from __future__ import annotations

import pytest

from processors.core.records import ScoreRecord
from tests.controller.stats_run import Outcome, Run, make_records


@pytest.fixture(scope="session")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[ScoreRecord]:
    return make_records(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="session")
def clean_run(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, records: list[ScoreRecord]
) -> Outcome:
    """The stats worker over ``records``, never stopped: what a stopped one must end equal to."""
    run = Run(kafka_bootstrap, tmp_path_factory.mktemp("clean"), records)
    run.start()
    try:
        run.wait(run.finished, "the clean run to apply every score")
    finally:
        run.stop()
    return run.outcome()
