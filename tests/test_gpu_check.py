"""benchmarks/gpu_check.py: it runs small on the CPU and prints its JSON rows,
and its precision check catches what issue 13 is about (hand cases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow  # the benchmark's small run, every row
def test_runs_small_on_the_cpu_and_prints_every_row():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                          "--device", "cpu", "--shape", "lite", "--batch", "8",
                          "--train-steps", "30", "--eval-images", "12"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    checks = [r["check"] for r in rows]
    assert checks == ["environment", "train_step", "train_step", "train_200", "scoring",
                      "precision", "summary"], res.stderr[-2000:]
    env, plain, chunk, train, scoring, prec, summary = rows
    assert (env["shape"], env["batch"], env["pair_chunk"]) == ("lite", 8, 8)
    assert plain["mode"] == "plain" and chunk["mode"] == "pair_chunk"
    assert plain["seconds"] > 0 and chunk["seconds"] > 0
    # the memory-saving mode keeps far fewer tensors for the backward pass
    assert chunk["saved_for_backward_mib"] < plain["saved_for_backward_mib"]
    assert train["steps"] == 30 and np.isfinite(train["loss_last"])
    assert scoring["pairs"] == 12 * 60 and scoring["pairs_per_s"] > 0
    assert prec["scores_dtype"] == "float32" and prec["autocast"] == "bfloat16"
    assert prec["rsum_fp32"] == pytest.approx(sum(v for k, v in prec["recalls_fp32"].items()
                                                  if k != "rsum"), abs=0.01)
    assert summary["passed"] == (res.returncode == 0)


def test_ranks_by_hand():
    # 2 images x 2 captions; caption j belongs to image j // 2
    sims = np.array([[0.9, 0.2, 0.95, 0.1],
                     [0.3, 0.4, 0.5, 0.6]], dtype=np.float32)
    i2t, t2i = gpu_check.ranks(sims, 2)
    assert i2t.tolist() == [1, 0]  # image 0's best own 0.9 < 0.95; image 1's 0.6 is top
    assert t2i.tolist() == [0, 1, 1, 0]  # caption 1: 0.2 < 0.4 of image 0, etc.


def test_precision_check_fails_on_new_ties_and_passes_on_small_noise():
    rng = np.random.default_rng(0)
    n_img, per = 20, 5
    owner = np.arange(n_img * per) // per
    s32 = rng.normal(size=(n_img, n_img * per)) * 0.02 + 0.99
    s32[owner, np.arange(n_img * per)] += 0.005  # positives a little above, near 1
    s32 = torch.tensor(s32, dtype=torch.float32)
    bf16 = s32.to(torch.bfloat16).float()  # what a bf16 sigmoid did: a 2^-8 grid near 1
    row = gpu_check.precision_row(bf16, s32, per, torch.bfloat16)
    assert row["positive_ties_amp"] > row["positive_ties_fp32"] and not row["passed"]
    small = s32 + 1e-6 * torch.randn(s32.shape, generator=torch.Generator().manual_seed(1))
    row = gpu_check.precision_row(small, s32, per, torch.bfloat16)
    assert row["passed"] and row["changes_within_2eps"]
