"""Distributed pretraining: 2 gloo processes launched by torchrun, one item each, take the same
optimizer steps as 1 process with both items.

Why this holds exactly (up to float summation order): the SHAMISA loss is not a sum over items (its
graphs and the variance/covariance halves couple all items), so every process all-gathers the
embeddings of all processes *with gradient* and evaluates the loss of the whole global batch; the
gather's backward sums the gradients of the (identical) per-process losses, and DDP's averaging then
yields the single-process gradient. Batch-norm statistics are per process on the CPU (no CPU
SyncBatchNorm), so the comparison runs with ``bn_mode=frozen``; with ``bn_mode=train`` the two
set-ups differ by the per-process batch statistics (on CUDA ``sync_bn`` removes that difference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images

# One optimizer step: later steps rebuild top-k / kNN graphs, whose discrete choices can flip on
# float-rounding ties and so amplify the ~1e-7 differences of the reduction order.
COMMON = ["--preset", "tiny", "--max-steps", "1", "--set", "bn_mode=frozen", "--set", "lr=0.05"]


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    data = make_images(tmp_path / "data", n=6)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "shamisa", "pretrain", "--data", str(data), "--out", str(tmp_path / "ddp"),
         *COMMON, "--set", "items_per_step=1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stderr
    single = subprocess.run(
        [sys.executable, "-m", "shamisa", "pretrain", "--data", str(data), "--out", str(tmp_path / "one"),
         *COMMON, "--set", "items_per_step=2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    rows_ddp = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    rows_one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_ddp] == [r["step"] for r in rows_one] == [1]
    for key in ("loss", "var", "cov", "rel", "pair", "align", "reg", "w_knn", "n_edges"):
        assert rows_ddp[0][key] == pytest.approx(rows_one[0][key], rel=1e-5, abs=1e-7), key

    from shamisa.configs import apply_overrides, preset
    from shamisa.training.checkpoint import seed_everything
    from shamisa.training.model import build_model

    cfg = apply_overrides(preset("tiny"), ["bn_mode=frozen"])
    seed_everything(cfg.seed)  # the initial weights, as pretrain() draws them
    init = {k: v.detach() for k, v in build_model(cfg).state_dict().items()}
    w_one = load_file(str(tmp_path / "one" / "ckpt" / "last.safetensors"))
    w_ddp = load_file(str(tmp_path / "ddp" / "ckpt" / "last.safetensors"))
    assert w_ddp.keys() == w_one.keys() == init.keys()
    moved = 0
    for k, v in w_one.items():
        if not v.is_floating_point():
            continue
        step_one, step_ddp = v - init[k], w_ddp[k] - init[k]
        if step_one.abs().max() > 0:
            moved += 1
        torch.testing.assert_close(step_ddp, step_one, rtol=1e-3, atol=1e-7, msg=lambda m: f"{k}: {m}")
    assert moved > 10  # the encoder, projector and prototypes all took a step
