"""One comparison table on a human-rated dataset (CLIVE by default): every method with the same encoder
family and the same compute budget per trained method.

Methods (``--methods``):

* ``imagenet`` -- the encoder's ImageNet weights, frozen, linear probe (no training);
* ``brisque`` -- the classic BRISQUE features with an RBF SVR, same splits (no training);
* ``arniqa`` -- ARNIQA-style contrastive pretraining (:mod:`shamisa.objectives.arniqa`) from the ImageNet
  weights for ``budget_minutes``, then the linear probe;
* ``shamisa`` -- SHAMISA pretraining for ``budget_minutes``, then the linear probe;
* ``lml`` -- LML-IQA supervised fine-tuning (:mod:`shamisa.finetuning.lml`) for ``budget_minutes`` in total,
  spread over ``lml_splits`` splits (it trains once per split, so on a CPU it sees fewer splits).

Ablations (``--ablations``): SHAMISA pretraining with loss-config overrides, same budget each:
metadata branches only, feature branches only, no transport branch, binary relations.

The linear probe is :func:`shamisa.evaluation.protocol.evaluate_linear_probe` on the 10 random 70/10/20 splits
(seed 27) of :func:`shamisa.datasets.make_splits`; LML-IQA uses the same splits (its split ``s`` is the
probe's split ``s``), so the table also gives every method's split-0 SRCC for a like-for-like row.

Trained encoders can be reused (``shamisa_weights``, ``arniqa_weights``: encoder files or pretraining run
folders; ``lml_results``: ``result.json`` files of finished fine-tuning runs), so the table can be rebuilt
without retraining. Outputs (atomic): ``<out>/comparison.json``, ``<out>/comparison.md`` and the bar chart.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file

from shamisa.configs import apply_overrides, preset
from shamisa.datasets import load_dataset, make_splits
from shamisa.errors import ConfigError, ModelFileError, ShamisaError
from shamisa.evaluation.brisque import brisque_features_from_paths
from shamisa.evaluation.features import extract_features
from shamisa.evaluation.protocol import EvalConfig, evaluate_linear_probe
from shamisa.fileio import atomic_path, atomic_write_json, atomic_write_text
from shamisa.finetuning.lml import FinetuneConfig, finetune
from shamisa.models import build_encoder, load_encoder
from shamisa.training import pretrain, read_checkpoint

METHODS = ("imagenet", "brisque", "arniqa", "shamisa", "lml")
LABELS = {
    "imagenet": "ImageNet (frozen) + ridge",
    "brisque": "BRISQUE + SVR",
    "arniqa": "ARNIQA-style pretraining + ridge",
    "shamisa": "SHAMISA pretraining + ridge",
    "lml": "LML-IQA fine-tuning",
}
PROTOCOLS = {"imagenet": "probe", "brisque": "probe", "arniqa": "probe", "shamisa": "probe", "lml": "fine-tune"}

# SHAMISA ablations at CPU scale: loss-config overrides (see docs/methods.md).
ABLATIONS: dict[str, dict[str, Any]] = {
    "metadata_only": {"coef_knn": 0.0, "coef_transport": 0.0},
    "features_only": {"coef_structural": 0.0, "coef_ref_dist": 0.0, "coef_ref_ref": 0.0, "coef_dist_dist": 0.0},
    "no_transport": {"coef_transport": 0.0},
    "binary_relations": {"binary": True},
}
ABLATION_LABELS = {
    "metadata_only": "SHAMISA, metadata branches only",
    "features_only": "SHAMISA, feature branches only",
    "no_transport": "SHAMISA, no transport branch",
    "binary_relations": "SHAMISA, binary relations",
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Settings of a benchmark run.

    Attributes:
        root: dataset folder (CLIVE: the ChallengeDB_release folder).
        dataset: dataset name for :func:`shamisa.datasets.load_dataset`.
        methods: methods to run, in table order.
        budget_minutes: training wall-time budget of every trained method (pretraining / fine-tuning).
        ablations: also run the SHAMISA ablations (each with the same budget).
        ablation_names: run only these ablations (default: all of :data:`ABLATIONS`); naming any
            implies ``ablations``.
        encoder: encoder family of every learned method.
        crop: crop side of the linear probe (224 = the protocol).
        n_splits: number of random splits (seed 27).
        shamisa_weights, arniqa_weights: reuse a trained encoder (file or run folder) instead of training.
        lml_results: reuse finished LML-IQA runs (``result.json`` paths) instead of fine-tuning.
        merge: earlier ``comparison.json`` files whose successful rows are taken as they are (no
            computation) for the methods they hold; the other methods run.
        pretrain_preset: ``shamisa.configs`` preset the pretraining starts from (``cpu``).
        pretrain_data: pristine image folders for pretraining (default: the preset's).
        pretrain_overrides: extra ``key=value`` overrides of the pretraining config.
        lml_splits: how many splits LML-IQA fine-tunes on (the budget is shared between them).
        lml_crop, lml_batch_size: LML-IQA crop and batch size (CPU-sized defaults).
        cache_dir: feature cache folder (None: no cache).
        amp: bf16 autocast for probe feature extraction (off = the fp32 reference).
        num_workers: image decoding workers for feature extraction.
        out: folder of the result files.
        runs_dir: folder of the training runs (default ``<out>/runs``).
        chart: path of the bar chart PNG.
        command: the command line, recorded in the outputs.
    """

    root: str
    dataset: str = "clive"
    methods: tuple[str, ...] = METHODS
    budget_minutes: float = 10.0
    ablations: bool = False
    ablation_names: tuple[str, ...] = ()
    encoder: str = "efficientnet_lite0"
    crop: int = 224
    n_splits: int = 10
    shamisa_weights: str | None = None
    arniqa_weights: str | None = None
    lml_results: tuple[str, ...] = ()
    merge: tuple[str, ...] = ()
    pretrain_preset: str = "cpu"
    pretrain_data: tuple[str, ...] = ()
    pretrain_overrides: tuple[str, ...] = ()
    lml_splits: int = 1
    lml_crop: int = 128
    lml_batch_size: int = 8
    cache_dir: str | None = None
    amp: bool = False
    num_workers: int = 1
    out: str = "bench/results"
    runs_dir: str | None = None
    chart: str = "docs/benchmark.png"
    command: str = ""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown benchmark method(s) {', '.join(unknown)} (choose from {', '.join(METHODS)})")
        bad = [a for a in self.ablation_names if a not in ABLATIONS]
        if bad:
            raise ConfigError(f"unknown ablation(s) {', '.join(bad)} (choose from {', '.join(ABLATIONS)})")
        if not self.methods and not self.ablations and not self.ablation_names:
            raise ConfigError("nothing to run: give at least one method or --ablations")
        if self.budget_minutes <= 0:
            raise ConfigError(f"budget_minutes must be > 0, got {self.budget_minutes}")
        if self.lml_splits < 1 or self.lml_splits > self.n_splits:
            raise ConfigError(f"lml_splits must be in [1, n_splits={self.n_splits}], got {self.lml_splits}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def runs(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else Path(self.out) / "runs"


@dataclass
class MethodResult:
    """One row of the table.

    Attributes:
        key: method key (``imagenet`` ... or ``ablation:<name>``).
        label: display name.
        protocol: ``probe`` or ``fine-tune``.
        status: ``ok``, ``failed`` or ``skipped``.
        srcc, plcc: per-split test correlations (split order of ``splits``).
        splits: the split indices the correlations belong to.
        train_seconds: training wall time (None: no training, or reused weights of unknown cost).
        eval_seconds: feature extraction + regression (or test prediction) time.
        budget_minutes: the budget the training ran under (None: untrained).
        source: where the model came from (``trained``, ``reused:<path>``, ``ImageNet``, ``-``).
        note: free text (e.g. why a method failed).
        details: anything else worth keeping (selected alpha, steps, ...).
    """

    key: str
    label: str
    protocol: str
    status: str = "ok"
    srcc: list[float] = field(default_factory=list)
    plcc: list[float] = field(default_factory=list)
    splits: list[int] = field(default_factory=list)
    train_seconds: float | None = None
    eval_seconds: float | None = None
    budget_minutes: float | None = None
    source: str = "-"
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def srcc_median(self) -> float:
        return float(np.median(self.srcc)) if self.srcc else math.nan

    @property
    def plcc_median(self) -> float:
        return float(np.median(self.plcc)) if self.plcc else math.nan

    def split_value(self, split: int, metric: str = "srcc") -> float:
        values = self.srcc if metric == "srcc" else self.plcc
        return float(values[self.splits.index(split)]) if split in self.splits else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["srcc_median"] = _clean(self.srcc_median)
        d["plcc_median"] = _clean(self.plcc_median)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodResult:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


def load_rows(paths: Sequence[str | Path]) -> dict[str, MethodResult]:
    """The successful rows of earlier ``comparison.json`` files, by method key (later files win)."""
    rows: dict[str, MethodResult] = {}
    for p in paths:
        try:
            payload = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: cannot read benchmark results ({e})") from None
        if payload.get("format") != "shamisa-benchmark":
            raise ConfigError(f"{p}: not a shamisa benchmark result file")
        for d in payload.get("results", []):
            if d.get("status") == "ok":
                r = MethodResult.from_dict(d)
                r.details["merged_from"] = str(p)
                rows[r.key] = r
    return rows


def _clean(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


# -------------------------------------------------------------------------------------------- reporting


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def markdown_table(results: Sequence[MethodResult]) -> str:
    """The results as a markdown table (one row per method)."""
    head = ("| method | protocol | SRCC (median) | PLCC (median) | splits | SRCC split 0 | PLCC split 0 "
            "| training time | budget | model |")
    rows = [head, "|" + "---|" * 10]
    for r in results:
        if r.status != "ok":
            rows.append(f"| {r.label} | {r.protocol} | {r.status} | - | - | - | - | - | - | {r.note or '-'} |")
            continue
        budget = "-" if r.budget_minutes is None else f"{r.budget_minutes:g} min"
        rows.append(
            f"| {r.label} | {r.protocol} | {_fmt(r.srcc_median)} | {_fmt(r.plcc_median)} | {len(r.srcc)} | "
            f"{_fmt(r.split_value(0))} | {_fmt(r.split_value(0, 'plcc'))} | {_fmt_time(r.train_seconds)} | "
            f"{budget} | {r.source} |"
        )
    return "\n".join(rows) + "\n"


def bar_chart(results: Sequence[MethodResult], path: str | Path, *, title: str = "") -> Path:
    """Grouped bars of median SRCC and PLCC per method (with the split range as error bars); PNG,
    written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok" and r.srcc]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(ok) + 2), 4.2), dpi=120)
    x = np.arange(len(ok))
    width = 0.38
    for off, metric, color in ((-width / 2, "srcc", "#3b6ea5"), (width / 2, "plcc", "#e39b3b")):
        vals = np.array([r.srcc_median if metric == "srcc" else r.plcc_median for r in ok])
        lo = np.array([min(r.srcc if metric == "srcc" else r.plcc) for r in ok])
        hi = np.array([max(r.srcc if metric == "srcc" else r.plcc) for r in ok])
        ax.bar(x + off, vals, width, label=metric.upper() + " (median over splits)", color=color,
               yerr=np.vstack([vals - lo, hi - vals]), capsize=3, error_kw={"elinewidth": 0.8})
        for xi, v in zip(x + off, vals, strict=True):
            ax.text(xi, 0.02, f"{v:.3f}", ha="center", va="bottom", fontsize=7, color="white", rotation=90)
    n_max = max(len(r.srcc) for r in ok)
    ax.set_xticks(x)
    ax.set_xticklabels([_tick_label(r.label) + (f"\n({len(r.srcc)} of {n_max} splits)" if len(r.srcc) < n_max
                        else "") for r in ok], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("correlation with MOS (test split)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def _tick_label(label: str, width: int = 18) -> str:
    """A bar label broken into lines of at most ``width`` characters (``" + "`` starts a new line)."""
    import textwrap

    parts = label.replace(" + ", "\n+ ").split("\n")
    return "\n".join(line for part in parts for line in textwrap.wrap(part, width) or [""])


def budget_phrase(results: Sequence[MethodResult], cfg: BenchmarkConfig) -> str:
    """How the trained rows were budgeted: ``cfg.budget_minutes`` when every trained row ran under it,
    otherwise a pointer to the per-row columns (rows reused or merged from other runs)."""
    trained = [r for r in results if r.status == "ok" and (r.train_seconds is not None or r.budget_minutes is not None)]
    if not trained:
        return "no trained method"
    if {r.budget_minutes for r in trained} == {cfg.budget_minutes}:
        return f"{cfg.budget_minutes:g} min per trained method"
    return "training time and budget per row"


def write_outputs(
    results: Sequence[MethodResult], cfg: BenchmarkConfig, *, chart: bool = True, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``comparison.json``, ``comparison.md`` (under ``cfg.out``) and the chart (``cfg.chart``)."""
    out = Path(cfg.out)
    paths = {"json": out / "comparison.json", "md": out / "comparison.md"}
    budget = budget_phrase(results, cfg)
    machine = f"{platform.machine()} CPU, {_cpu_count()} cores ({platform.system()}), torch {_torch_version()}"
    payload = {
        "format": "shamisa-benchmark",
        "version": 1,
        "dataset": cfg.dataset,
        "config": cfg.to_dict(),
        "command": cfg.command,
        "machine": machine,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": [r.to_dict() for r in results],
        **(extra or {}),
    }
    atomic_write_json(paths["json"], payload)
    md = [
        f"# Benchmark on {cfg.dataset.upper()}",
        "",
        f"Command: `{cfg.command or '(library call)'}`",
        "",
        f"Machine: {machine}. Encoder family: {cfg.encoder} from ImageNet. Training: "
        f"{budget} (wall time; pretraining preset `{cfg.pretrain_preset}`). Probe: "
        f"frozen encoder, 5 crops x 2 scales at {cfg.crop} px ({'bf16 autocast' if cfg.amp else 'fp32'}), "
        f"ridge with alpha chosen on validation, {cfg.n_splits} random 70/10/20 splits (seed 27); LML-IQA: "
        "fine-tuned once per split on the same splits (column `splits`: how many). SRCC/PLCC: test split, median over splits.",
        "",
        markdown_table(results),
    ]
    notes = [f"- {r.label}: {r.note}" for r in results if r.note]
    notes += [f"- {r.label}: row computed by an earlier run, taken from `{r.details['merged_from']}`"
              for r in results if r.details.get("merged_from")]
    if notes:
        md += ["Notes:", "", *notes, ""]
    atomic_write_text(paths["md"], "\n".join(md))
    if chart and any(r.status == "ok" and r.srcc for r in results):
        paths["chart"] = bar_chart(results, cfg.chart, title=f"{cfg.dataset.upper()}: {cfg.encoder}, {budget}")
    return paths


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _torch_version() -> str:
    import torch

    return torch.__version__


# ---------------------------------------------------------------------------------------------- runners


@dataclass
class _Context:
    cfg: BenchmarkConfig
    ds: Any
    splits: Any
    log: Callable[[str], None]


def _probe_result(key: str, label: str, res: Any, **kw: Any) -> MethodResult:
    per = res.per_split
    return MethodResult(
        key=key, label=label, protocol="probe",
        srcc=[float(p["srcc"]) for p in per], plcc=[float(p["plcc"]) for p in per],
        splits=[int(p["split"]) for p in per],
        details={"selection": {k: v for k, v in res.selection.items() if not isinstance(v, (list, np.ndarray))}},
        **kw,
    )


def _probe_encoder(ctx: _Context, encoder: Any, key: str, label: str, **kw: Any) -> MethodResult:
    t0 = time.perf_counter()
    encoder = encoder.eval()
    feats = extract_features(
        encoder, ctx.ds.paths, crop=ctx.cfg.crop, cache_dir=ctx.cfg.cache_dir, dataset_name=ctx.cfg.dataset,
        amp=ctx.cfg.amp, num_workers=ctx.cfg.num_workers, progress=True,
    )
    res = evaluate_linear_probe(feats, ctx.ds, ctx.splits, EvalConfig(crop=ctx.cfg.crop, n_splits=ctx.cfg.n_splits))
    return _probe_result(key, label, res, eval_seconds=round(time.perf_counter() - t0, 1), **kw)


def encoder_from_run(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load a trained encoder from an encoder file or a pretraining run folder.

    A run folder gives ``encoder.safetensors`` when present, else the encoder weights of its last
    checkpoint (``ckpt/last.safetensors``, keys ``encoder.*``) with the run's ``config.json``.

    Returns:
        ``(encoder, info)`` where ``info`` may hold ``train_seconds`` read from the run's metrics.
    """
    p = Path(path)
    info: dict[str, Any] = {"path": str(p)}
    run = p if p.is_dir() else p.parent
    info.update(_run_time(run))
    if p.is_file():
        enc, meta = load_encoder(p)
        info["meta"] = meta
        return enc, info
    if (p / "encoder.safetensors").is_file():
        enc, meta = load_encoder(p / "encoder.safetensors")
        info["meta"] = meta
        return enc, info
    record, weights, _ = read_checkpoint(p)
    cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else record.get("config", {})
    name = cfg.get("encoder")
    if not name:
        raise ModelFileError(f"{p}: cannot tell which encoder the run trained (no config.json)")
    enc = build_encoder(name)
    tensors = {k[len("encoder."):]: v for k, v in load_file(str(weights)).items() if k.startswith("encoder.")}
    missing, unexpected = enc.load_state_dict(tensors, strict=False)
    if unexpected or [k for k in missing if not k.endswith(("mean", "std"))]:
        raise ModelFileError(f"{weights}: encoder weights do not fit {name}")
    info["step"] = record.get("step")
    return enc, info


def _run_time(run: Path) -> dict[str, Any]:
    """Training wall time of a pretraining run folder (last ``elapsed_s`` of its metrics.jsonl)."""
    m = run / "metrics.jsonl"
    if not m.is_file():
        return {}
    elapsed = None
    for line in m.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "elapsed_s" in rec:
            elapsed = float(rec["elapsed_s"])
    return {} if elapsed is None else {"train_seconds": elapsed}


def pretrain_note(run: str | Path) -> str:
    """How far a pretraining run got, from its own checkpoint record (``""`` when unknown)."""
    rec = Path(run) / "ckpt" / "last.json"
    try:
        d = json.loads(rec.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return ""
    step = d.get("step")
    total = d.get("total_steps")
    return f"{step} optimizer steps" + (f" of {total} planned" if total else "") + " within the budget"


def _pretrain(ctx: _Context, method: str, name: str, loss_overrides: dict[str, Any] | None = None) -> tuple[Path, float]:
    cfg = preset(ctx.cfg.pretrain_preset)
    overrides = [f"method={method}", f"encoder={ctx.cfg.encoder}", f"max_minutes={ctx.cfg.budget_minutes}",
                 f"out_dir={ctx.cfg.runs / name}"]
    if ctx.cfg.pretrain_data:
        overrides.append("data_dirs=" + ",".join(ctx.cfg.pretrain_data))
    overrides += [f"loss.{k}={v}" for k, v in (loss_overrides or {}).items()]
    overrides += list(ctx.cfg.pretrain_overrides)
    cfg = apply_overrides(cfg, overrides)
    ctx.log(f"pretraining {name} ({method}) for {ctx.cfg.budget_minutes:g} min -> {cfg.out_dir}")
    t0 = time.perf_counter()
    run = pretrain(cfg)
    return Path(run), time.perf_counter() - t0


def run_imagenet(ctx: _Context) -> MethodResult:
    enc = build_encoder(ctx.cfg.encoder, pretrained=True)
    return _probe_encoder(ctx, enc, "imagenet", LABELS["imagenet"], source="ImageNet")


def run_brisque(ctx: _Context) -> MethodResult:
    t0 = time.perf_counter()
    feats = brisque_features_from_paths(ctx.ds.paths, num_workers=ctx.cfg.num_workers, cache_dir=ctx.cfg.cache_dir,
                                        dataset_name=ctx.cfg.dataset, progress=True)
    res = evaluate_linear_probe(feats, ctx.ds, ctx.splits, EvalConfig(method="brisque", n_splits=ctx.cfg.n_splits))
    return _probe_result("brisque", LABELS["brisque"], res, eval_seconds=round(time.perf_counter() - t0, 1),
                         source="-")


def _run_pretrained(ctx: _Context, method: str, weights: str | None) -> MethodResult:
    if weights:
        enc, info = encoder_from_run(weights)
        r = _probe_encoder(ctx, enc, method, LABELS[method], source=f"reused: {weights}")
        r.train_seconds = info.get("train_seconds")
        r.note = "reused encoder; training time read from its run log" if r.train_seconds else "reused encoder"
        return r
    run, seconds = _pretrain(ctx, method, method)
    enc, _ = encoder_from_run(run)
    r = _probe_encoder(ctx, enc, method, LABELS[method], source=f"trained: {run}", budget_minutes=ctx.cfg.budget_minutes)
    r.train_seconds = round(seconds, 1)
    r.note = pretrain_note(run)
    return r


def run_arniqa(ctx: _Context) -> MethodResult:
    return _run_pretrained(ctx, "arniqa", ctx.cfg.arniqa_weights)


def run_shamisa(ctx: _Context) -> MethodResult:
    return _run_pretrained(ctx, "shamisa", ctx.cfg.shamisa_weights)


def lml_result_rows(results: Sequence[dict[str, Any]], label: str = LABELS["lml"], source: str = "-") -> MethodResult:
    """Fold LML-IQA ``result.json`` payloads (one per split) into one table row."""
    ordered = sorted(results, key=lambda r: int(r["split"]))
    cfgs = [r.get("config", {}) for r in ordered]
    budgets = {c.get("max_minutes") for c in cfgs}
    return MethodResult(
        key="lml", label=label, protocol="fine-tune",
        srcc=[float(r["test_srcc"]) for r in ordered], plcc=[float(r["test_plcc"]) for r in ordered],
        splits=[int(r["split"]) for r in ordered],
        train_seconds=round(sum(float(r["train_seconds"]) for r in ordered), 1),
        eval_seconds=round(sum(float(r.get("eval_seconds", 0.0)) for r in ordered), 1),
        budget_minutes=(sum(b for b in budgets if b) if len(budgets) == 1 and None not in budgets else None),
        source=source,
        details={"runs": [{k: r.get(k) for k in ("split", "best_epoch", "best_val_srcc", "steps", "epochs_done",
                                                   "stopped_by")} for r in ordered],
                 "config": cfgs[0] if cfgs else {}},
    )


def describe_paths(paths: Sequence[str]) -> str:
    """``a, b`` for one or two paths; for more, their count and the folder they share."""
    if len(paths) <= 2:
        return ", ".join(paths)
    common = os.path.commonpath([str(Path(p).resolve().parent) for p in paths])
    return f"{len(paths)} result files under {common}"


def run_lml(ctx: _Context) -> MethodResult:
    if ctx.cfg.lml_results:
        payloads = [json.loads(Path(p).read_text()) for p in ctx.cfg.lml_results]
        r = lml_result_rows(payloads, source="reused: " + describe_paths(ctx.cfg.lml_results))
        r.budget_minutes = sum(float(p["config"].get("max_minutes") or 0) for p in payloads) or None
        r.note = _lml_note(payloads, ctx.cfg.n_splits)
        return r
    per_split = ctx.cfg.budget_minutes / ctx.cfg.lml_splits
    payloads = []
    for s in range(ctx.cfg.lml_splits):
        fcfg = FinetuneConfig(
            dataset=ctx.cfg.dataset, root=ctx.cfg.root, encoder=ctx.cfg.encoder, split=s, n_splits=ctx.cfg.n_splits,
            crop=ctx.cfg.lml_crop, batch_size=ctx.cfg.lml_batch_size, epochs=100, max_minutes=per_split,
            out=str(ctx.cfg.runs / f"lml-split{s}"),
        )
        ctx.log(f"LML-IQA split {s}: {per_split:g} min")
        payloads.append(finetune(fcfg, dataset=ctx.ds).to_dict())
    r = lml_result_rows(payloads, source="trained")
    r.budget_minutes = ctx.cfg.budget_minutes
    r.note = _lml_note(payloads, ctx.cfg.n_splits)
    return r


def _lml_note(payloads: Sequence[dict[str, Any]], n_splits: int) -> str:
    per_run = [f"{p.get('steps')} steps / {float(p.get('epochs_done') or 0):.2f} epochs" for p in payloads]
    steps = f"{per_run[0]} on each split" if len(set(per_run)) == 1 and len(per_run) > 1 else ", ".join(per_run)
    c = payloads[0].get("config", {}) if payloads else {}
    note = (f"fine-tuned end to end (crop {c.get('crop')}, saliency {c.get('saliency')}): {steps}; "
            "a different protocol from the frozen-encoder probe")
    if len(payloads) < n_splits:
        note += f"; {len(payloads)} of the {n_splits} splits, compare with the split-0 columns"
    return note


RUNNERS: dict[str, Callable[[_Context], MethodResult]] = {
    "imagenet": run_imagenet,
    "brisque": run_brisque,
    "arniqa": run_arniqa,
    "shamisa": run_shamisa,
    "lml": run_lml,
}


def run_ablation(ctx: _Context, name: str) -> MethodResult:
    run, seconds = _pretrain(ctx, "shamisa", f"ablation-{name}", ABLATIONS[name])
    enc, _ = encoder_from_run(run)
    r = _probe_encoder(ctx, enc, f"ablation:{name}", ABLATION_LABELS[name], source=f"trained: {run}",
                       budget_minutes=ctx.cfg.budget_minutes)
    r.train_seconds = round(seconds, 1)
    r.note = pretrain_note(run)
    r.details["loss_overrides"] = ABLATIONS[name]
    return r


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    log: Callable[[str], None] | None = None,
    runners: dict[str, Callable[[_Context], MethodResult]] | None = None,
    dataset: Any | None = None,
    splits: Any | None = None,
) -> tuple[list[MethodResult], dict[str, Path]]:
    """Run every method, writing the outputs after each one (so a long run can be read while it goes).

    A method that fails is recorded with ``status="failed"`` and its error; the others still run.

    Args:
        cfg: the settings.
        log: progress sink (default: stderr).
        runners: replace method runners (tests).
        dataset, splits: an already loaded dataset / splits (default: load ``cfg.dataset`` from
            ``cfg.root``, 10 random splits, seed 27).

    Returns:
        ``(rows, written paths)``.
    """
    def _stderr(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log = log or _stderr
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.root)
    if splits is None:
        splits = make_splits(dataset, n_splits=cfg.n_splits, seed=27)
    ctx = _Context(cfg, dataset, splits, log)
    table = dict(RUNNERS, **(runners or {}))
    jobs: list[tuple[str, str, Callable[[], MethodResult]]] = [
        (m, LABELS[m], (lambda m=m: table[m](ctx))) for m in cfg.methods
    ]
    if cfg.ablations or cfg.ablation_names:
        names = [a for a in ABLATIONS if not cfg.ablation_names or a in cfg.ablation_names]
        jobs += [(f"ablation:{a}", ABLATION_LABELS[a], (lambda a=a: run_ablation(ctx, a))) for a in names]
    merged = load_rows(cfg.merge) if cfg.merge else {}
    # inputs given explicitly win over merged rows
    explicit = {"lml": bool(cfg.lml_results), "arniqa": bool(cfg.arniqa_weights), "shamisa": bool(cfg.shamisa_weights)}
    merged = {k: v for k, v in merged.items() if not explicit.get(k, False)}
    results: list[MethodResult] = []
    paths: dict[str, Path] = {}
    for key, label, job in jobs:
        if key in merged:
            row = merged[key]
            log(f"== {label}: row taken from {row.details['merged_from']}")
            if not row.note and row.source.startswith("trained: "):
                row.note = pretrain_note(row.source.removeprefix("trained: "))
            results.append(row)
            continue
        log(f"== {label}")
        t0 = time.perf_counter()
        try:
            r = job()
        except (ShamisaError, RuntimeError, OSError, ValueError, KeyError, ImportError) as e:
            log(f"{label} failed: {type(e).__name__}: {e}")
            r = MethodResult(key=key, label=label, protocol=PROTOCOLS.get(key, "probe"), status="failed",
                             note=f"{type(e).__name__}: {e}"[:300])
        r.details.setdefault("wall_seconds", round(time.perf_counter() - t0, 1))
        results.append(r)
        if r.status == "ok":
            log(f"{label}: SRCC {_fmt(r.srcc_median)} PLCC {_fmt(r.plcc_median)} over {len(r.srcc)} split(s)")
        paths = write_outputs(results, cfg, chart=False)
    paths = write_outputs(results, cfg, chart=True)
    return results, paths


def with_overrides(cfg: BenchmarkConfig, **kw: Any) -> BenchmarkConfig:
    """A copy of ``cfg`` with some fields replaced."""
    return replace(cfg, **kw)
