"""The run log of pretraining (rank 0 only): ``metrics.jsonl`` (one JSON object per log window: loss
terms, branch weights, lr, timings), progress on stderr (a bar on a terminal, one line per window in
a log) and the loss-curve plot written at the end."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shamisa.fileio import atomic_path, atomic_write_text
from shamisa.progress import progress_bar, stderr_console

__all__ = ["RunLog", "plot_loss_curve"]


class RunLog:
    """JSONL metrics + stderr lines (+ a progress bar on a terminal); silent when not ``enabled``.

    Steps report their loss terms and timings with :meth:`add`; :meth:`flush` writes the mean of the
    window as one row every ``log_every`` steps.
    """

    def __init__(self, out_dir: Path, enabled: bool, total_steps: int, start_step: int) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self.window: list[dict[str, float]] = []
        self.progress: Any = None
        self.console = stderr_console()
        if enabled and self.console.is_terminal:
            self.progress = progress_bar(transient=True)
            self.console = self.progress.console
            self.task = self.progress.add_task("pretrain", total=total_steps, completed=start_step, info="")
            self.progress.start()
        if not enabled:
            return
        if start_step == 0:
            self.path.unlink(missing_ok=True)
        else:
            self.truncate_after(start_step)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def info(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False, soft_wrap=True)

    def add(self, values: Mapping[str, float]) -> None:
        """One finite step's loss terms, lr and timings (``t_data``, ``t_forward``, ``t_backward``, ``t_step``)."""
        self.window.append(dict(values))

    def flush(self, *, step: int, epoch: float, elapsed_s: float, crops_per_step: int) -> dict[str, Any] | None:
        """Write the mean of the window as one row, show it, start a new window; None when empty."""
        if not self.window:
            return None
        mean = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[0]}
        mean["crops_per_s"] = crops_per_step / max(mean["t_step"], 1e-9)
        row = {"step": step, "epoch": round(epoch, 6), **mean, "elapsed_s": round(elapsed_s, 2)}
        self.window = []
        self.write(row)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=f"loss {row['loss']:.4f}")
        else:
            self.info(
                f"step {step}/{self.total_steps} loss {row['loss']:.4f} (var {row.get('var', 0):.3f} cov "
                f"{row.get('cov', 0):.3f} rel {row.get('rel', 0):.4f}) lr {row['lr']:.2e} "
                f"{row['t_step']:.2f}s/step [data {row['t_data']:.2f} fwd {row['t_forward']:.2f} "
                f"bwd {row['t_backward']:.2f}]"
            )
        return row

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Loss (and lr) against step from ``metrics.jsonl`` -> PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.set_title("pretraining loss (mean per log window)")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="best")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
