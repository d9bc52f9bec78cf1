"""The local supervisor restarts dead processors with back-off, up to its bound."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from processors.core.supervisor import ProcessorFailed, RestartPolicy, Supervisor


def _env_without_broker(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # `skyloop worker` without a broker is a configuration error: it exits 2 at once
    for key in [k for k in os.environ if k.startswith("SKYLOOP_")]:
        monkeypatch.delenv(key)
    return {"HF_HUB_OFFLINE": "1"}


def _heal_until(sup: Supervisor, predicate: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        sup.heal()
        assert time.monotonic() < deadline, "supervisor did not get there in time"
        time.sleep(0.05)


def test_restart_policy_backs_off_and_bounds_restarts() -> None:
    policy = RestartPolicy(max_restarts=4, base_s=1.0, max_s=3.0, window_s=10.0)
    assert policy.delay([], 0.0) == 1.0
    assert policy.delay([0.0], 1.0) == 2.0
    assert policy.delay([0.0, 1.0], 2.0) == 3.0  # capped
    assert policy.delay([0.0, 1.0, 2.0, 3.0], 4.0) is None
    assert policy.delay([0.0, 1.0, 2.0, 3.0], 12.5) == 2.0  # three left the window


def test_a_dying_worker_is_restarted_then_given_up_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env_without_broker(monkeypatch)
    restarted: list[int] = []
    policy = RestartPolicy(max_restarts=2, base_s=0.05, max_s=0.1, window_s=60.0)
    with Supervisor(
        tmp_path, env, policy, on_restart=lambda c: restarted.append(c.restarts)
    ) as sup:
        child = sup.start("sink", "sink")
        _heal_until(sup, lambda: child.restarts == 2 and child.proc.poll() is not None)
        assert restarted == [1, 2]
        assert sup.restarts == {"sink": 2}
        with pytest.raises(ProcessorFailed, match="after 2 restarts") as info:
            _heal_until(sup, lambda: False)
    assert "SKYLOOP_BOOTSTRAP_SERVERS" in str(info.value)  # the log's tail explains why
    log = (tmp_path / "sink.log").read_text()
    assert log.count("exited with code 2; restarting") == 2


def test_a_child_that_is_not_restartable_or_was_stopped_is_never_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env_without_broker(monkeypatch)
    with Supervisor(tmp_path, env) as sup:
        child = sup.start("ingest", "ingest", restart=False)
        child.proc.wait(60)
        with pytest.raises(ProcessorFailed, match="not restartable"):
            sup.heal()
        other = sup.start("sink", "sink")
        sup.stop("sink")
        other.proc.wait(60)
        sup.children.pop("ingest")
        assert sup.heal() == [] and sup.restarts == {}
