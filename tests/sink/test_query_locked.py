"""``skyloop sql`` against chdb files another process holds for a moment (a run's sink starting,
or stopping at the end of the run): it asks again instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HOLD = """
import sys, time
from processors.core.clickhouse import connect
client = connect("chdb://" + sys.argv[1])
client.command("CREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = MergeTree ORDER BY x")
client.command("INSERT INTO t VALUES (7)")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
client.close()
"""


def _sql(data: Path, sql: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    return subprocess.run(
        [sys.executable, "-m", "processors.cli", "sql", sql, "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_query_waits_while_another_process_holds_the_files(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "clickhouse"), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        answered = _sql(tmp_path, "SELECT x FROM t")
        assert answered.returncode == 0, answered.stderr
        assert "7" in answered.stdout
    finally:
        holder.kill()
        holder.wait()
