"""Another process holding a chdb directory, as a `skyloop sql` reading the files does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def hold_chdb(path: Path, seconds: float) -> subprocess.Popen[str]:
    """A child process that opens ``path``, holds it ``seconds``, then lets go; returned once
    it holds it. The caller waits for it (or kills it)."""
    script = textwrap.dedent(
        f"""
        import time
        from processors.core.clickhouse import connect
        client = connect("chdb://{path}")
        print("holding", flush=True)
        time.sleep({seconds})
        client.close()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child
