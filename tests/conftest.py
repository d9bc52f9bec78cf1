"""Shared fixtures: one embedded Tansu broker per test session; unique names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from processors.core.config import Settings, load_settings
from processors.core.stack import EmbeddedBroker

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def prepared_backbones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One folder of prepared backbones for the session and the processes it starts (not the
    user's cache): the first scorer prepares, the rest load (processors.score.backbone.prepared).
    """
    folder = tmp_path_factory.mktemp("prepared-backbones")
    before = os.environ.get("SKYLOOP_PREPARED_DIR")
    os.environ["SKYLOOP_PREPARED_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SKYLOOP_PREPARED_DIR", None)
    else:
        os.environ["SKYLOOP_PREPARED_DIR"] = before


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the embedded broker (or $SKYLOOP_KAFKA_BOOTSTRAP, a real Kafka)."""
    real = os.environ.get("SKYLOOP_KAFKA_BOOTSTRAP")
    if real:
        yield real
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def unique() -> str:
    """A short unique token for topic prefixes and group ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(tmp_path: Path, unique: str) -> Settings:
    """Settings isolated to this test: own data dir, topic prefix and group prefix.

    A 2 s session: the embedded broker holds a group's first join for half the session (1 s
    here, 3 s at the default 6 s), and most tests here join a group or two. A worker a test
    starts as a whole ``skyloop run`` keeps the default.
    """
    return load_settings(
        data_dir=tmp_path / "data",
        topic_prefix=f"t{unique}.",
        group_prefix=f"g{unique}",
        session_timeout_ms=2000,
    )


# Property tests draw the same examples on every machine and run (a seed per test, no example
# database): CI passes or fails the same way each time. SKYLOOP_HYPOTHESIS=explore draws anew.
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore")
hypothesis_settings.load_profile(
    "explore" if os.environ.get("SKYLOOP_HYPOTHESIS") == "explore" else "repeatable"
)
