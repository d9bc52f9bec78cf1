"""A child's own environment (its metrics port) is kept across its restarts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from processors.core.supervisor import RestartPolicy, Supervisor


def test_a_restarted_child_gets_its_own_environment_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("SKYLOOP_")]:
        monkeypatch.delenv(key)
    policy = RestartPolicy(max_restarts=3, base_s=0.05, max_s=0.1, window_s=60.0)
    # a port no setting accepts: the worker refuses it at start, naming the variable
    own = {"SKYLOOP_METRICS_PORT": "70000"}
    with Supervisor(tmp_path, {"HF_HUB_OFFLINE": "1"}, policy) as sup:
        child = sup.start("sink", "sink", env=own)
        other = sup.start("score", "score")
        deadline = time.monotonic() + 60
        while not (child.restarts == 1 and child.proc.poll() is not None):
            sup.heal()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        other.proc.wait(60)
    sink_log = (tmp_path / "sink.log").read_text()
    assert sink_log.count("SKYLOOP_METRICS_PORT") == 2, sink_log[-2000:]
    assert "SKYLOOP_METRICS_PORT" not in (tmp_path / "score.log").read_text()
