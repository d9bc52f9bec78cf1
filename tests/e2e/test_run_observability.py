"""A short `skyloop run` as a person watching it sees it: every worker's /metrics on the ports
stack.json names (and the Prometheus target file), an operator's pause and resume posted to
the alert webhook, and the summary ending with a balanced ledger."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from processors.local import WORKERS
from tests.core.test_alerts import Receiver

pytestmark = pytest.mark.e2e

IMAGES = 200


def _skyloop(*args: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_a_short_run_serves_metrics_alerts_and_balances_its_ledger(tmp_path: Path) -> None:
    receiver = Receiver()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update(
        HF_HUB_OFFLINE="1",
        SKYLOOP_REFERENCE_SIZE="20",
        SKYLOOP_BATCH_SIZE="16",
        SKYLOOP_INGEST_MAX_LAG="40",  # ingest lives as long as scoring does
        SKYLOOP_ALERT_WEBHOOK_URL=receiver.url,
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "processors.cli", "run"),
            *("--images", str(IMAGES), "--data-dir", str(data)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        stack: dict[str, object] = {}
        while not stack:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never wrote stack.json"
            latest = data / "latest"
            if latest.is_file() and (Path(latest.read_text().strip()) / "stack.json").is_file():
                run_dir = Path(latest.read_text().strip())
                stack = json.loads((run_dir / "stack.json").read_text())
            time.sleep(0.2)
        ports = stack["metrics"]
        assert isinstance(ports, dict) and set(ports) == {*WORKERS, "ingest"}
        targets = json.loads((run_dir / "prometheus-targets.json").read_text())
        assert sorted(t["labels"]["processor"] for t in targets) == sorted(ports)
        assert json.loads((data / "prometheus-targets.json").read_text()) == targets
        answered: dict[str, str] = {}
        while set(answered) != set(ports):
            assert proc.poll() is None, "the run ended before every worker was scraped"
            assert time.monotonic() < deadline, f"no /metrics from {set(ports) - set(answered)}"
            for worker, port in ports.items():
                if worker not in answered:
                    # not answering yet: ingest starts once the others are ready
                    with contextlib.suppress(OSError):
                        answered[worker] = _scrape(int(port))
            time.sleep(0.2)
        for worker, text in answered.items():
            assert "skyloop_messages_consumed_total" in text, worker
            assert "process_resident_memory_bytes" in text, worker
        ctl = {**env, "SKYLOOP_DATA_DIR": str(data)}
        _skyloop("control", "pause", "--reason", "look", "--data-dir", str(data), env=ctl)
        _skyloop("control", "resume", "--data-dir", str(data), env=ctl)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        receiver.close()
    assert proc.returncode == 0, err[-3000:]
    last = out.strip().splitlines()[-1]
    assert last == (
        f"ledger: ingested {IMAGES} = scored {IMAGES} + cut 0 + dead letters 0 (+ in flight 0)"
    ), out[-2000:]
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert report.read_text().strip().splitlines()[-1] == last
    statuses = [(b["status"], b["alerts"][0]["labels"]["alertname"]) for b in receiver.bodies]
    assert statuses == [
        ("firing", "SkyloopPipelinePaused"),
        ("resolved", "SkyloopPipelinePaused"),
    ]
    assert (data / "alerts-sent.txt").read_text().count("\n") == 2
    assert json.loads((data / "prometheus-targets.json").read_text()) == []
