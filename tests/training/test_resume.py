"""Crash safety: a training process killed with SIGKILL mid-run and started again with the same
command resumes from its last checkpoint and ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")


def _command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "shamisa", "pretrain", "--preset", "tiny", "--data", str(data), "--out", str(out),
        "--max-steps", "8", "--epochs", "3", "--num-workers", "0",
        "--set", "checkpoint_every=3", "--set", "log_every=1",
    ]


def _logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written
    return steps


def test_resume_in_process_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """Stop at step 2 (max_steps), rerun with a higher cap: same weights as one 4-step run."""
    from shamisa.configs import apply_overrides, preset
    from shamisa.training import pretrain

    data = make_images(tmp_path / "data", n=6)
    base = apply_overrides(preset("tiny"), [f"data_dirs={data}", "epochs=2", "checkpoint_every=1"])
    pretrain(apply_overrides(base, [f"out_dir={tmp_path / 'run'}", "max_steps=2"]))
    pretrain(apply_overrides(base, [f"out_dir={tmp_path / 'run'}", "max_steps=4"]))
    pretrain(apply_overrides(base, [f"out_dir={tmp_path / 'ref'}", "max_steps=4"]))
    a = load_file(str(tmp_path / "ref" / "ckpt" / "last.safetensors"))
    b = load_file(str(tmp_path / "run" / "ckpt" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _logged_steps(tmp_path / "run") == [1, 2, 3, 4]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_images(tmp_path / "data", n=6)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reference = subprocess.Popen(_command(data, tmp_path / "ref"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_command(data, tmp_path / "run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if any(s >= 4 for s in _logged_steps(tmp_path / "run")):  # a checkpoint at step 3 exists
            os.kill(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    killed_at = json.loads((tmp_path / "run" / "ckpt" / "last.json").read_text())["step"]
    assert 3 <= killed_at < 8

    resumed = subprocess.run(_command(data, tmp_path / "run"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from" in resumed.stderr and f"at step {killed_at} of 8" in resumed.stderr
    _, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err[-2000:]

    a = load_file(str(tmp_path / "ref" / "ckpt" / "last.safetensors"))
    b = load_file(str(tmp_path / "run" / "ckpt" / "last.safetensors"))
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"
    oa = load_file(str(tmp_path / "ref" / "ckpt" / "last-optim.safetensors"))
    ob = load_file(str(tmp_path / "run" / "ckpt" / "last-optim.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    # the metrics log holds every step exactly once, as the uninterrupted run's does
    assert _logged_steps(tmp_path / "run") == _logged_steps(tmp_path / "ref") == list(range(1, 9))
    ref_loss = [json.loads(x)["loss"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    run_loss = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert run_loss == ref_loss
