"""The :class:`QualityModel` (a frozen encoder + ridge head that scores images) and :func:`load`.

Usage::

    import shamisa

    model = shamisa.load("default")            # the bundled model, or a path to a model file
    model.score("photo.jpg")                   # 0.63   (float in [0, 1], higher is better)
    model.score(["a.jpg", "b.png"])            # array([0.63, 0.41])
    r = model.score("photo.jpg", return_raw=True)
    r.score, r.raw                             # 0.63, 63.2   (raw = on the training data's MOS scale)

    metric = shamisa.create_metric("shamisa")  # pyiqa-style torch.nn.Module
    metric(x)                                  # x: (N, 3, H, W) in [0, 1] -> (N,) tensor

A score is computed exactly as in the linear-probe evaluation protocol: 5 crops (center and 4 corners)
of ``crop`` x ``crop`` pixels at full and at half scale, the L2-normalised encoder features of crop k at
both scales concatenated, the ridge head applied to each of the 5 crop features and the 5 predictions
averaged. This ``raw`` prediction is on the scale of the head's training labels; the public ``score``
maps it to [0, 1] with the training data's published range ``(lo, hi)``::

    score = clip((raw - lo) / (hi - lo), 0, 1)        # MOS heads
    score = 1 - clip((raw - lo) / (hi - lo), 0, 1)    # DMOS heads (lower DMOS = better)

Precision: the encoder runs in fp32 by default. ``load(..., precision="bf16")`` (``shamisa score
--precision bf16``) runs a channels-last copy of it under bfloat16 autocast instead: about 3x faster on
CPUs with native bfloat16 (AVX512-BF16, AMX) and on recent GPUs, with raw scores that differ from fp32
by 0.44 MOS points on average on CLIVE (largest 3.8 on the 0-100 scale) and the same cross-validated
SRCC (bench/score_precision.py). The ridge head always runs in fp32.

Image preparation is :mod:`shamisa.inference.preprocess`; the model file and its card are
:mod:`shamisa.inference.model_file` and :mod:`shamisa.inference.card`.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shamisa.device import resolve_device
from shamisa.errors import ConfigError, ImageLoadError, ModelFileError, ShamisaError
from shamisa.evaluation.ridge import head_from_tensors
from shamisa.inference.card import ModelCard, raw_to_score
from shamisa.inference.model_file import model_path, read_model_file
from shamisa.inference.preprocess import DEFAULT_MAX_SIDE, Prepared, as_image_tensor, display_path, prepare_image, prepare_path
from shamisa.models import Encoder, PairedEncoder, build_encoder, load_backbone_state, with_readout

__all__ = ["PRECISIONS", "QualityModel", "ScoreRecord", "ScoreResult", "cpu_has_native_bf16", "load"]

DEFAULT_BATCH_SIZE_CPU = 1
"""Images per forward pass on the CPU (10 crops): measured fastest on a 2-core machine (bench/score_throughput.py)."""
DEFAULT_BATCH_SIZE_CUDA = 16
PRECISIONS = ("fp32", "bf16")
"""Encoder arithmetic for inference: ``fp32`` (default, the reference) or ``bf16`` (bfloat16 autocast,
channels-last; ~3x faster on CPUs with native bfloat16, raw scores within about 0.5 MOS points on
average, see BENCHMARKS.md "Scoring throughput")."""


@dataclass(frozen=True)
class ScoreResult:
    """Scores with their raw values. ``score`` and ``raw`` are floats for one image, arrays (N,) else."""

    score: Any
    raw: Any

    def __float__(self) -> float:
        return float(self.score)


@dataclass(frozen=True)
class ScoreRecord:
    """One item of a streamed scoring job (CLI rows)."""

    path: str
    score: float | None = None
    raw: float | None = None
    width: int | None = None
    height: int | None = None
    flags: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The row of ``shamisa score`` (json / jsonl / csv) and of the server's API: ``path``, ``score``,
        ``raw`` (rounded to 6 decimals), ``width``, ``height``, ``flags`` (a list) and ``error``."""
        return {
            "path": self.path,
            "score": None if self.score is None else round(self.score, 6),
            "raw": None if self.raw is None else round(self.raw, 6),
            "width": self.width,
            "height": self.height,
            "flags": list(self.flags),
            "error": self.error,
        }


class QualityModel(nn.Module):
    """A frozen encoder + ridge head that scores images (see the module docstring for the recipe).

    Build with :func:`load`. Attributes: ``card`` (:class:`ModelCard`), ``encoder``, ``coef`` (2D,),
    ``intercept`` (scalar tensor), ``max_side``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: Any,
        card: ModelCard,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        optimize: bool = True,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r} (use one of: {', '.join(PRECISIONS)})")
        self.precision = precision
        self.card = card
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        w, b = head.effective()
        coef = torch.as_tensor(np.asarray(w, dtype=np.float64).reshape(-1))
        if coef.numel() != card.head_dim:
            raise ModelFileError(f"head has {coef.numel()} coefficients, expected {card.head_dim}")
        self.head = head
        self.register_buffer("coef", coef.float(), persistent=False)
        self.register_buffer("intercept", torch.tensor(float(b)), persistent=False)
        self.max_side = int(max_side)
        self.optimize = bool(optimize) and not os.environ.get("SHAMISA_NO_JIT")
        self.__dict__["_frozen"] = None  # inference-optimised copy of the encoder (not a submodule)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> QualityModel:  # .to() / .cuda(): drop the copy
        self.__dict__["_frozen"] = None
        return super()._apply(fn, *args, **kwargs)

    def _inference_encoder(self, x: torch.Tensor) -> Any:
        """The encoder for no-grad inference on (N, 3, c, c) crops: a callable returning (N, D) features.

        fp32 on the CPU: the encoder traced once, frozen and passed through
        ``torch.jit.optimize_for_inference`` (batch-norm folded into the convolutions, oneDNN layouts),
        about 1.5-1.8x faster than eager mode with the same results (max difference ~1e-7).

        bf16: a channels-last copy of the encoder run under bfloat16 autocast (on the CPU traced and
        frozen the same way). Features differ from fp32 by a few per cent (rounding of activations to
        8-bit mantissas); the head still runs in fp32.

        Falls back to the eager encoder (with autocast for bf16) if tracing fails or with
        ``optimize=False`` / ``SHAMISA_NO_JIT=1``; CUDA always runs eagerly.
        """
        bf16 = self.precision == "bf16"
        if not bf16 and (not self.optimize or x.device.type != "cpu"):
            return self.encoder
        cached = self.__dict__.get("_frozen")  # cleared by .to() / .cuda() (see _apply)
        if cached is not None and cached[0] == tuple(x.shape[1:]):
            return cached[1]
        fast: Any = _Bf16Encoder(self.encoder, x.device.type) if bf16 else self.encoder
        if self.optimize and x.device.type == "cpu":
            traced = _traced_for_inference(fast, x, fold=not bf16)
            if traced is None:  # tracing failed: eager mode from now on, without retrying for other shapes
                self.optimize = False
            else:
                fast = traced
        self.__dict__["_frozen"] = (tuple(x.shape[1:]), fast)
        return fast

    # -- properties
    @property
    def crop(self) -> int:
        return int(self.card.crop)

    @property
    def device(self) -> torch.device:
        return self.coef.device

    def train(self, mode: bool = True) -> QualityModel:  # always frozen
        super().train(False)
        return self

    def default_batch_size(self) -> int:
        """Images per forward pass when not given: 1 on the CPU, 16 on CUDA."""
        return DEFAULT_BATCH_SIZE_CUDA if self.device.type == "cuda" else DEFAULT_BATCH_SIZE_CPU

    # -- core tensor path
    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 10, 3, c, c) crops -> (B, 5, 2D) protocol features (full-scale h_k || half-scale h_k)."""
        b = crops.shape[0]
        x = crops.reshape(b * 10, *crops.shape[2:]).to(self.device, non_blocking=True)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.encoder.parameters())):
            h = self.encoder(x)
        else:
            h = self._inference_encoder(x)(x)
        h = h.float().reshape(b, 2, 5, -1)
        return torch.cat([h[:, 0], h[:, 1]], dim=-1)

    def predict_raw(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 5, 2D) -> (B,) raw predictions (mean of the 5 crop predictions)."""
        return (features @ self.coef + self.intercept).mean(dim=1)

    def raw_from_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 10, 3, c, c) crops -> (B,) raw predictions."""
        return self.predict_raw(self.features(crops))

    def to_score(self, raw: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw predictions -> [0, 1] scores (higher is better)."""
        r = raw.detach().cpu().double().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        return raw_to_score(r, self.card.score_range, self.card.mos_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) or (3, H, W) in [0, 1] -> (N,) scores in [0, 1] as a tensor (differentiable)."""
        xb = x.unsqueeze(0) if x.ndim == 3 else x
        if xb.ndim != 4 or xb.shape[1] not in (1, 3):
            raise ValueError(f"expected an image tensor of shape (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
        crops = torch.stack([prepare_image(as_image_tensor(img), self.crop, self.max_side).crops for img in xb])
        raw = self.raw_from_crops(crops)
        lo, hi = self.card.score_range
        s = ((raw - lo) / (hi - lo)).clamp(0.0, 1.0)
        return 1.0 - s if self.card.mos_type == "dmos" else s

    # -- user API
    def score(
        self,
        x: Any,
        *,
        return_raw: bool = False,
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> Any:
        """Score one or many images.

        Args:
            x: a path (str / PathLike), a list of paths, a PIL image, a numpy array (H, W, 3) uint8 or
                float in [0, 1], a tensor (3, H, W) or (N, 3, H, W) in [0, 1], or a list of any of these.
            return_raw: return a :class:`ScoreResult` with ``.score`` and ``.raw`` (training-label scale).
            batch_size: images per encoder batch (each image is 10 crops); default 1 on the CPU, 16 on CUDA.
            workers: decoding threads for paths (default: up to 4).

        Returns:
            A float for one image, a float64 array (N,) for several (or a ScoreResult of those).

        Raises:
            ImageLoadError: a path cannot be decoded (use :meth:`score_paths` to collect errors instead).
            ValueError / TypeError: an array or tensor of the wrong shape, type or range.
        """
        batch_size = self.default_batch_size() if batch_size is None else batch_size
        single, items = _normalise_inputs(x)
        raws = np.empty(len(items), dtype=np.float64)
        paths_idx = [i for i, it in enumerate(items) if isinstance(it, (str, os.PathLike))]
        if paths_idx:
            for i, rec in zip(
                paths_idx,
                self.score_paths(
                    [items[i] for i in paths_idx], batch_size=batch_size, workers=workers, raise_errors=True
                ),
                strict=True,
            ):
                raws[i] = rec.raw
        path_set = set(paths_idx)
        others = [i for i in range(len(items)) if i not in path_set]
        for start in range(0, len(others), max(1, batch_size)):
            idx = others[start : start + max(1, batch_size)]
            crops = torch.stack([prepare_image(as_image_tensor(items[i]), self.crop, self.max_side).crops for i in idx])
            with torch.inference_mode():
                raws[idx] = self.raw_from_crops(crops).double().cpu().numpy()
        scores = self.to_score(raws)
        if single:
            return ScoreResult(float(scores[0]), float(raws[0])) if return_raw else float(scores[0])
        return ScoreResult(scores, raws) if return_raw else scores

    def quality_map(self, image: Any, *, patch: int | None = None, stride: int | None = None) -> Any:
        """Where quality drops: the score of each ``patch`` x ``patch`` patch every ``stride`` pixels
        (defaults: the crop size and half of it), as a :class:`shamisa.inference.maps.QualityMap` whose
        ``map`` is an (H, W) float32 array aligned with the image. See :mod:`shamisa.inference.maps`."""
        from shamisa.inference.maps import quality_map

        return quality_map(self, image, patch=patch, stride=stride)

    def score_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        raise_errors: bool = False,
    ) -> Iterator[ScoreRecord]:
        """Stream :class:`ScoreRecord` s for image files, in input order.

        Decoding and cropping run in a thread pool while the encoder works on the previous batch; at
        most about ``batch_size + 2 * workers`` decoded images are held in memory. A file that cannot
        be read gives a record with ``error`` set (or raises ImageLoadError if ``raise_errors``).
        ``batch_size`` defaults to 1 image on the CPU (fastest there, see bench/results) and 16 on CUDA;
        ``workers`` (decoding threads) to min(4, CPU count).
        """
        return _score_stream(self, paths, batch_size=batch_size, workers=workers, raise_errors=raise_errors)


def _normalise_inputs(x: Any) -> tuple[bool, list[Any]]:
    if isinstance(x, (str, os.PathLike)):
        return True, [x]
    if isinstance(x, torch.Tensor):
        if x.ndim == 4:
            return False, list(x)
        return True, [x]
    if isinstance(x, np.ndarray):
        if x.ndim == 4:
            return False, list(x)
        return True, [x]
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("nothing to score (empty list)")
        return False, list(x)
    return True, [x]


def _score_stream(
    model: QualityModel,
    paths: Iterable[Any],
    *,
    batch_size: int | None,
    workers: int | None,
    raise_errors: bool,
) -> Iterator[ScoreRecord]:
    batch_size = max(1, int(model.default_batch_size() if batch_size is None else batch_size))
    n_workers = max(1, int(workers if workers is not None else min(4, os.cpu_count() or 1)))
    crop, max_side = model.crop, model.max_side
    path_iter = iter(paths)
    window = batch_size + 2 * n_workers
    pending: deque[tuple[Any, Future[Prepared]]] = deque()
    stop = threading.Event()

    def submit_more(pool: ThreadPoolExecutor) -> None:
        while len(pending) < window and not stop.is_set():
            try:
                p = next(path_iter)
            except StopIteration:
                return
            pending.append((p, pool.submit(prepare_path, p, crop, max_side)))

    def run_batch(batch: list[tuple[Any, Prepared]]) -> list[ScoreRecord]:
        crops = torch.stack([prep.crops for _, prep in batch])
        with torch.inference_mode():
            raw = model.raw_from_crops(crops).double().cpu().numpy()
        scores = model.to_score(raw)
        return [
            ScoreRecord(display_path(p), float(s), float(r), prep.width, prep.height, prep.flags)
            for (p, prep), s, r in zip(batch, scores, raw, strict=True)
        ]

    # Build the optimised encoder before any decoding thread starts: tracing silences its warnings with
    # warnings.catch_warnings(), which is not thread-safe against other threads doing the same.
    model._inference_encoder(torch.zeros(1, 3, crop, crop, device=model.device))
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="shamisa-decode")
    try:
        submit_more(pool)
        # out holds items in input order: ("ok", path, Prepared) or ("err", record)
        out: list[tuple[str, Any, Any]] = []
        n_ok = 0
        while pending:
            p, fut = pending.popleft()
            try:
                prep = fut.result()
                out.append(("ok", p, prep))
                n_ok += 1
            except ShamisaError as e:
                if raise_errors:
                    raise
                reason = e.reason if isinstance(e, ImageLoadError) else str(e)
                out.append(("err", ScoreRecord(display_path(p), error=reason), None))
            submit_more(pool)
            if n_ok >= batch_size or not pending:
                yield from _flush(out, run_batch)
                out, n_ok = [], 0
    finally:
        stop.set()
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _flush(out: list[tuple[str, Any, Any]], run_batch: Any) -> Iterator[ScoreRecord]:
    oks = [(p, prep) for kind, p, prep in out if kind == "ok"]
    scored = iter(run_batch(oks)) if oks else iter(())
    for kind, p, _ in out:
        yield next(scored) if kind == "ok" else p


def _backbone_from_tensors(name: str, tensors: dict[str, torch.Tensor], source: str) -> Encoder:
    try:
        enc = build_encoder(name)
    except ConfigError as e:
        raise ModelFileError(f"{source}: {e}") from None
    load_backbone_state(enc, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, source=source)
    return enc.eval()


def _build_encoder_from_tensors(card: ModelCard, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The model's encoder: one backbone, or a content + quality pair (``content.*`` / ``quality.*``)."""
    if card.content:
        parts = {}
        for part in ("content", "quality"):
            prefix = f"{part}.backbone."
            parts[part] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not parts[part]:
                raise ModelFileError(f"{source}: the card says content + quality but the file has no {prefix}* tensors")
        content = _backbone_from_tensors(card.encoder, parts["content"], f"{source} (content)")
        quality = _backbone_from_tensors(card.encoder, parts["quality"], f"{source} (quality)")
        try:
            enc: nn.Module = PairedEncoder(content, quality, shared_stages=card.shared_stages)
        except ConfigError as e:
            raise ModelFileError(f"{source}: {e}") from None
    else:
        enc = _backbone_from_tensors(card.encoder, tensors, source)
    enc = with_readout(enc, card.readout)  # type: ignore[arg-type]
    if int(enc.feature_dim) != card.feature_dim:
        raise ModelFileError(
            f"{source}: encoder {card.encoder!r} gives {enc.feature_dim}-d features but the card says {card.feature_dim}"
        )
    return enc.eval()


class _Bf16Encoder(nn.Module):
    """Run an encoder in bfloat16 autocast on channels-last input (a copy: the model keeps its fp32 weights)."""

    def __init__(self, encoder: nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner = copy.deepcopy(encoder).eval().to(memory_format=torch.channels_last)
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.inner(x.contiguous(memory_format=torch.channels_last)).float()


def _traced_for_inference(module: nn.Module, x: torch.Tensor, *, fold: bool) -> Any:
    """Trace ``module`` on two of the crops, freeze it (and with ``fold`` run the oneDNN inference
    passes); None if tracing fails (the caller keeps eager mode, which is always correct)."""
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module.eval(), x[:2].clone(), check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
            return torch.jit.optimize_for_inference(frozen) if fold else frozen
    except Exception:
        return None


def cpu_has_native_bf16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """True if this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16), read from the flags in
    ``cpuinfo``; False where that file does not exist (not Linux). Without them ``precision="bf16"``
    is emulated and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def load(
    name_or_path: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    optimize: bool = True,
    precision: str = "fp32",
) -> QualityModel:
    """Load a bundled model by name (``"default"``; see :func:`list_models`) or a model file.

    Args:
        name_or_path: model name or path to a ``.safetensors`` model file written by
            ``shamisa fit`` / :func:`save_model`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or None / ``"auto"`` (CUDA when available).
        max_side: images with a longer side above this are downscaled first.
        optimize: on the CPU, run inference through a traced, frozen and inference-optimised copy of
            the encoder (same results, ~1.5x faster); False keeps eager mode.
        precision: ``"fp32"`` (default) or ``"bf16"``: bfloat16 encoder arithmetic, about 3x faster than
            fp32 on CPUs with native bfloat16 (AVX512-BF16 or AMX; see :func:`cpu_has_native_bf16`;
            slower than fp32 on CPUs without it) and on recent GPUs. Scores differ slightly from fp32
            (on CLIVE: raw scores within about 0.5 MOS points on average; see BENCHMARKS.md).

    Raises:
        ConfigError: unknown precision.
        ModelFileError: unknown name, missing/corrupt/mismatched file, unsupported format version.
    """
    path = model_path(name_or_path)
    card, enc_t, head_t = read_model_file(path)
    encoder = _build_encoder_from_tensors(card, enc_t, str(path))
    try:
        head = head_from_tensors(head_t)
    except ShamisaError:
        raise
    except Exception as e:
        raise ModelFileError(f"{path}: malformed head tensors ({type(e).__name__}: {e})") from None
    model = QualityModel(encoder, head, card, max_side=max_side, optimize=optimize, precision=precision)
    return model.to(resolve_device(device))
