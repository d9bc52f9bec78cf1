"""Large buffers freed and allocated again come from the heap once the thresholds are raised:
no page faults per reuse once the heap has grown to its working size (what each batch's
activations cost a model process otherwise)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from processors.core.allocator import keep_large_allocations

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")

_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from processors.core.allocator import keep_large_allocations
    if sys.argv[1] == "keep":
        assert keep_large_allocations()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # the heap grows to its working size first (glibc: several rounds)
        torch.ones(16 * 2**20)
    before = faults()
    for _ in range(5):
        torch.ones(16 * 2**20)  # allocated, every page written, freed
    print(faults() - before)
    """
)


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_a_freed_large_buffer_is_reused_without_page_faults() -> None:
    mapped, kept = _faults("default"), _faults("keep")
    pages = 5 * 64 * 2**20 // 4096
    assert mapped > pages // 2, "glibc maps a 64 MB buffer afresh each time by default"
    assert kept < pages // 20, f"{kept} page faults for 5 reuses of a kept 64 MB buffer"


def test_the_first_call_decides_and_later_calls_repeat_its_answer() -> None:
    first = keep_large_allocations()
    assert first is True  # Linux with glibc, as here
    assert keep_large_allocations(1) is first
