"""tools/bench/gpu.py without a GPU: a clear refusal, its argument checks, and the raw sweep
(run on the CPU here; the same code measures CUDA where there is one)."""

from __future__ import annotations

import argparse

import pytest
import torch

from tools.bench import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal is for machines without CUDA")
def test_without_cuda_it_refuses_and_says_how_to_try_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gpu.main([]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--allow-cpu" in err


def test_batch_lists_are_checked() -> None:
    assert gpu._ints("32, 64,128") == [32, 64, 128]
    for bad in ("", "0", "a,b", "-4"):
        with pytest.raises(argparse.ArgumentTypeError):
            gpu._ints(bad)


def test_the_sweep_measures_every_batch_in_each_precision_the_device_has() -> None:
    rates = gpu.sweep("cpu", [1, 2], iters=1)
    assert {(1, False), (2, False)} <= set(rates)
    assert set(rates) <= {(1, False), (2, False), (1, True), (2, True)}
    assert all(rate > 0 for rate in rates.values())
