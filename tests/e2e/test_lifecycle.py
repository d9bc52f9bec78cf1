"""The scoring-model lifecycle through ``skyloop run``, driven as an operator would.

During a live run (embedded broker, every processor a process) an operator registers two
models with ``skyloop control register``:

1. weights with NaN in them: the model's gate trial (shadow, never served) sees NaN outputs
   → ``model.gate_failed``; not one of its records is ever served;
2. weights that are finite but scrambled (each convolution's values permuted): the gate passes
   (no NaN, latency like production's), the shadow stays healthy, the canary serves some images
   and is judged against production's verdicts on those images → ``model.rolled_back``.

The test prints the seconds from the canary's first served output to the rollback being
applied by every processor (the first outputs stamped with a control offset at or past it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from processors.core.clickhouse import connect
from processors.score.backbone import packaged_weights_path

pytestmark = pytest.mark.e2e

SETTINGS = {
    "SKYLOOP_REFERENCE_SIZE": "24",
    "SKYLOOP_BATCH_SIZE": "16",
    "SKYLOOP_ROLLOUT_TRIAL_OUTPUTS": "24",
    "SKYLOOP_ROLLOUT_SHADOW_OUTPUTS": "24",
    "SKYLOOP_CANARY_FRACTION": "0.5",
    "SKYLOOP_CANARY_HEALTH_WINDOW": "32",
    "SKYLOOP_CANARY_OUTPUTS": "100000",  # never promoted within the test
    "SKYLOOP_INGEST_MAX_LAG": "128",  # ingest stays close behind: Ctrl-C drains in seconds
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    return {**env, **SETTINGS, "HF_HUB_OFFLINE": "1", "SKYLOOP_OPERATOR": "e2e"}


def _skyloop(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"skyloop {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def _events(data: Path, env: dict[str, str], *types: str) -> list[dict[str, Any]]:
    """The run's events of ``types`` so far ([] while the run has no folder or sink yet)."""
    args = ["events", "--data-dir", str(data), "--format", "json"]
    for t in types:
        args += ["--type", t]
    done = subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stdout) if done.returncode == 0 else []  # type: ignore[no-any-return]


def _wait_for(
    data: Path, env: dict[str, str], run: subprocess.Popen[str], kind: str, subject: str, s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + s
    while time.monotonic() < deadline:
        assert run.poll() is None, f"skyloop run ended early: {run.stderr.read()[-3000:]}"  # type: ignore[union-attr]
        found = [e for e in _events(data, env, kind) if e["subject"] == subject]
        if found:
            return found[0]
        time.sleep(2)
    raise AssertionError(f"no {kind} for {subject} within {s:.0f}s: {_events(data, env)}")


def _time(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _weights(tmp: Path) -> tuple[Path, Path]:
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    broken = {k: v.clone() for k, v in state.items()}
    scrambled = {k: v.clone() for k, v in state.items()}
    generator = torch.Generator().manual_seed(0)
    for key, tensor in state.items():
        if tensor.ndim == 4 and tensor.is_floating_point():  # convolution kernels
            broken[key] = torch.full_like(tensor, float("nan"))
            order = torch.randperm(tensor.numel(), generator=generator)
            scrambled[key] = tensor.flatten()[order].reshape(tensor.shape)
    paths = tmp / "broken.pt", tmp / "scrambled.pt"
    torch.save(broken, paths[0])
    torch.save(scrambled, paths[1])
    return paths


def test_a_broken_model_never_serves_and_a_degraded_canary_is_rolled_back(
    tmp_path: Path,
) -> None:
    env = _env()
    data = tmp_path / "data"
    broken, scrambled = _weights(tmp_path)
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "processors.cli", "run", "--source", "synthetic"),
            *("--duration", "20m", "--data-dir", str(data)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(data, env, run, "calibration.updated", "synthetic", 180)
        _skyloop("control", "register", "broken@1", "--weights", str(broken), "--data-dir",
                 str(data), env=env)  # fmt: skip
        failed = _wait_for(data, env, run, "model.gate_failed", "broken@1", 240)
        assert failed["evidence"]["candidate_nan_outputs"] > 0
        _skyloop("control", "register", "scrambled@1", "--weights", str(scrambled),
                 "--data-dir", str(data), env=env)  # fmt: skip
        passed = _wait_for(data, env, run, "model.gate_passed", "scrambled@1", 240)
        assert passed["evidence"]["candidate_nan_outputs"] == 0
        rolled = _wait_for(data, env, run, "model.rolled_back", "scrambled@1", 300)
        models = json.loads(_skyloop("models", "--data-dir", str(data), "--format", "json",
                                     env=env))  # fmt: skip
    finally:
        run.send_signal(signal.SIGINT)
        _out, err = run.communicate(timeout=600)
    assert run.returncode in (0, 130), err[-3000:]
    roles = {m["version"]: (m["role"], m["gate"]) for m in models}
    assert roles["broken@1"] == ("rejected", "failed")
    assert roles["scrambled@1"] == ("rolled back", "passed")

    run_dir = Path((data / "latest").read_text().strip())
    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:
        offset = client.query(
            "SELECT kafka_offset FROM control_events FINAL WHERE type = 'model.rolled_back'"
        ).result_rows[0][0]
        served_broken = client.query(
            "SELECT count() FROM scores FINAL WHERE model_version = 'broken@1' "
            "AND role IN ('production', 'canary')"
        ).result_rows[0][0]
        tried_broken = client.query(
            "SELECT count() FROM scores FINAL WHERE model_version = 'broken@1'"
        ).result_rows[0][0]
        first_canary, canary_after = client.query(
            "SELECT minIf(scored_at, calibrated), countIf(control_offset >= %(o)s) FROM scores "
            "FINAL WHERE model_version = 'scrambled@1' AND role = 'canary'",
            parameters={"o": offset},
        ).result_rows[0]
        applied = client.query(
            "SELECT 'score', min(scored_at) FROM scores WHERE control_offset >= %(o)s UNION ALL "
            "SELECT 'detect', min(detected_at) FROM candidates WHERE control_offset >= %(o)s",
            parameters={"o": offset},
        ).result_rows
    finally:
        client.close()
    assert tried_broken > 0 and served_broken == 0  # scored in trial, never served
    assert canary_after == 0  # no canary record after the rollback was applied
    seconds = {name: (at - first_canary).total_seconds() for name, at in applied if at.year > 1970}
    first = first_canary if first_canary.tzinfo else first_canary.replace(tzinfo=UTC)
    decided = (_time(rolled["at"]) - first).total_seconds()  # event time: its last output
    print(f"rollback: {rolled['params']}; evidence {rolled['evidence']}")
    print(
        f"seconds from the first served canary output: to the output that decided the rollback "
        f"{decided:.1f}, to the rollback applied by each processor {seconds}"
    )
    assert "score" in seconds and max(seconds.values()) < 60
