"""Pretraining configuration: one frozen dataclass, named presets, JSON round trip and CLI overrides.

Defaults live in code. A resolved config is printed at the start of a run, stored in the run folder
(``config.json``) and in every checkpoint, so a run can always be reproduced from its own files.

Presets (see docs/pretraining.md for the reasoning behind each number):

* ``paper``: the SHAMISA A0 recipe (ResNet-50, 224 px, 2 items a step per process, SGD 1.5e-3, cosine
  warm restarts). Without ``--weights`` its ResNet-50 starts from random initialisation, while the
  paper's reference code starts from ImageNet weights (a warning says so at run time). ``items_per_step``
  is per process: under ``torchrun`` with N processes an optimizer step sees N times as many items.
* ``cpu``:   an EfficientNet-Lite0 fine-tune from ImageNet, one epoch over 518 images, capped at 55 minutes
  on a shared 2-core CPU.
* ``tiny``:  a few steps at 32 px with a random-init Lite0, for tests and smoke runs.

Overrides use dotted keys: ``apply_overrides(cfg, ["lr=1e-3", "loss.lambda_var=10"])``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shamisa.distortions.codecs import JPEG2000_IMPLS
from shamisa.errors import ConfigError

#: the encoder readouts (the names of :data:`shamisa.models.readout.READOUTS`; configs import no model code).
READOUTS = ("head", "multilevel")
from shamisa.objectives import ArniqaLossConfig, ShamisaLossConfig

__all__ = [
    "METHODS",
    "PRESETS",
    "PretrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "preset",
]

METHODS = ("shamisa", "arniqa")
"""Pretraining objectives the config accepts. ``train.py`` maps each to a loss builder; a method whose
builder is not registered yet fails with a ConfigError when training starts."""

AMP_MODES = ("auto", "off", "bf16", "fp16")
BN_MODES = ("train", "frozen")
PROJECTOR_INPUTS = ("unit", "sqrt_dim")


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run.

    Sizes: one *item* = ``n_refs`` pristine crops at two scales, each distorted by ``n_comps``
    compositions at ``n_levels`` severities, i.e. ``2*n_refs*(1 + n_comps*n_levels)`` crops of
    ``patch_size`` px. ``items_per_step`` items are processed per process and micro-step; with
    ``world_size`` processes and ``grad_accum`` micro-steps an optimizer step sees
    ``items_per_step * world_size * grad_accum`` items.
    """

    # objective
    method: str = "shamisa"
    loss: ShamisaLossConfig = field(default_factory=ShamisaLossConfig)
    arniqa_loss: ArniqaLossConfig = field(default_factory=ArniqaLossConfig)  # used with method="arniqa"
    # model
    encoder: str = "resnet50"
    pretrained: bool = False
    weights: str | None = None
    bn_mode: str = "train"
    projector_input: str = "unit"
    readout: str = "head"  # what the projector sees: "head" (last map) or "multilevel" (shamisa.models.readout)
    # data
    data_dirs: tuple[str, ...] = ()
    exclude_dirs: tuple[str, ...] = ()
    patch_size: int = 224
    n_refs: int = 3
    n_comps: int = 4
    n_levels: int = 5
    max_distortions: int = 7
    severity_dist: str = "gaussian"
    items_per_step: int = 2
    grad_accum: int = 1
    num_workers: int = 0
    synth_on_device: bool = False
    jpeg2000_impl: str = "openjpeg"  # or "approx": the labelled wavelet approximation (faster, not the codec)
    # optimisation
    lr: float = 1.5e-3
    encoder_lr_scale: float = 1.0  # encoder lr = lr * this (1: one group for all, as the paper)
    encoder_freeze_steps: int = 0  # first N steps train the projector/prototypes only (encoder lr 0)
    encoder_frozen_stages: int = 0  # the stem and the first N stages keep their start weights for good
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eta_min: float = 1e-6
    t0_epochs: int = 1
    t_mult: int = 2
    epochs: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None
    max_nonfinite: int = 5
    # runtime
    seed: int = 27
    device: str = "auto"
    threads: int = 0
    amp: str = "auto"
    channels_last: bool = True
    sync_bn: bool = True
    # output
    out_dir: str = "runs/pretrain"
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self) -> None:
        validate(self)

    @property
    def crops_per_item(self) -> int:
        """Number of encoder inputs one item produces (pristine + distorted, both scales)."""
        return 2 * self.n_refs * (1 + self.n_comps * self.n_levels)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return config_from_dict(cls, data)


def validate(cfg: PretrainConfig) -> None:
    """Raise :class:`ConfigError` for an impossible value or combination."""
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, not {cfg.amp!r}")
    if cfg.bn_mode not in BN_MODES:
        raise ConfigError(f"bn_mode must be one of {', '.join(BN_MODES)}, not {cfg.bn_mode!r}")
    if cfg.projector_input not in PROJECTOR_INPUTS:
        raise ConfigError(
            f"projector_input must be one of {', '.join(PROJECTOR_INPUTS)}, not {cfg.projector_input!r}"
        )
    if cfg.readout not in READOUTS:
        raise ConfigError(f"readout must be one of {', '.join(READOUTS)}, not {cfg.readout!r}")
    positive = {
        "patch_size": cfg.patch_size,
        "n_refs": cfg.n_refs,
        "n_comps": cfg.n_comps,
        "n_levels": cfg.n_levels,
        "max_distortions": cfg.max_distortions,
        "items_per_step": cfg.items_per_step,
        "grad_accum": cfg.grad_accum,
        "epochs": cfg.epochs,
        "checkpoint_every": cfg.checkpoint_every,
        "log_every": cfg.log_every,
        "max_nonfinite": cfg.max_nonfinite,
        "t_mult": cfg.t_mult,
        "t0_epochs": cfg.t0_epochs,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.patch_size < 32:
        raise ConfigError(f"patch_size must be >= 32 px, got {cfg.patch_size}")
    if cfg.lr <= 0 or cfg.eta_min < 0 or cfg.eta_min > cfg.lr:
        raise ConfigError(f"need 0 <= eta_min <= lr and lr > 0 (lr={cfg.lr}, eta_min={cfg.eta_min})")
    if not 0 < cfg.encoder_lr_scale <= 1000:
        raise ConfigError(f"encoder_lr_scale must be in (0, 1000], got {cfg.encoder_lr_scale}")
    if cfg.encoder_freeze_steps < 0:
        raise ConfigError(f"encoder_freeze_steps must be >= 0, got {cfg.encoder_freeze_steps}")
    if cfg.encoder_frozen_stages < 0:
        raise ConfigError(f"encoder_frozen_stages must be >= 0, got {cfg.encoder_frozen_stages}")
    if not 0 <= cfg.momentum < 1 or cfg.weight_decay < 0:
        raise ConfigError(f"need 0 <= momentum < 1 and weight_decay >= 0 (got {cfg.momentum}, {cfg.weight_decay})")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1 or None, got {cfg.max_steps}")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ConfigError(f"max_minutes must be > 0 or None, got {cfg.max_minutes}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = torch's default), got {cfg.threads}")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.synth_on_device and cfg.num_workers:
        raise ConfigError("synth_on_device=true synthesises in the main process: set num_workers=0")
    if cfg.jpeg2000_impl not in JPEG2000_IMPLS:
        raise ConfigError(f"jpeg2000_impl must be one of {', '.join(JPEG2000_IMPLS)}, not {cfg.jpeg2000_impl!r}")
    if cfg.severity_dist not in {"gaussian", "uniform"}:
        raise ConfigError(f"severity_dist must be 'gaussian' or 'uniform', not {cfg.severity_dist!r}")


# ---------------------------------------------------------------------------------------------------
# presets


def _paper() -> PretrainConfig:
    return PretrainConfig(
        encoder="resnet50",
        pretrained=False,
        patch_size=224,
        n_refs=3,
        n_comps=4,
        n_levels=5,
        max_distortions=7,
        items_per_step=2,
        lr=1.5e-3,
        momentum=0.9,
        weight_decay=1e-4,
        eta_min=1e-6,
        t0_epochs=1,
        t_mult=2,
        epochs=1,
        seed=27,
        amp="auto",
        num_workers=8,
        out_dir="runs/pretrain-paper",
        checkpoint_every=2000,
        log_every=50,
    )


def _cpu() -> PretrainConfig:
    # Sized from measured step times on the shared 2-core CPU (bench/train_step.py, docs/pretraining.md):
    # 128 px crops, 2 refs x 3 compositions x 4 levels -> 52 crops an item, 2 items (104 crops) a step,
    # 2.5-5 s a step with one fp32 thread on 2 shared cores (bf16 autocast is slower single-threaded on
    # this CPU), so two epochs over the 698 images (698 steps) fit the 90-minute cap.
    # Loss balance: with the paper's A0 coefficients, an ImageNet Lite0 start and 128 px crops, the
    # expander output z collapses to a constant within ~10 steps (the covariance and relation terms
    # outweigh the variance hinge; the edge regulariser then pulls h together too) and the encoder
    # either stops learning or collapses (docs/pretraining.md, "Loss balance at CPU scale"). The cpu
    # preset therefore keeps batch-norm statistics frozen, feeds the expander sqrt(D)-scaled h, drops
    # the edge regulariser (the paper's ablation A2) and lowers lambda_inv / lambda_cov to 5 / 1, the
    # balance at which z keeps its spread for the whole run. The paper preset keeps A0 unchanged.
    # Encoder schedule: the first 86 steps train only the projector and the prototypes, then the encoder
    # follows at 0.03x the lr while the projector and prototypes stay at lr 1e-2 (10x the paper's 1.5e-3
    # scaled by batch): the head reaches its working regime fast and the encoder moves slowly under it.
    # Readout: the projector and the feature graphs see the multilevel readout (Lite's stages 5-7 and head,
    # shamisa.models.readout), the features the probe and the default model read, so the objective shapes
    # the middle stages too. Two epochs under one cosine (t0_epochs=2): on 698 pristine images (BSDS500,
    # McMaster, Urban100, Sun-Hays80; 698 steps, ~35 min on 2 shared cores) the encoder read out at
    # several levels beside the ImageNet one (the default model's content + quality pair) beats the same
    # readout of ImageNet alone on 10 of 10 CLIVE splits (SRCC and PLCC); every variant: docs/pretraining.md.
    # Everything not named here (schedule, momentum, weight decay, seed, max distortions, items per
    # step) is the paper recipe.
    return dataclasses.replace(
        _paper(),
        loss=ShamisaLossConfig(lambda_inv=5.0, lambda_cov=1.0, rho=0.0),
        encoder="efficientnet_lite0",
        pretrained=True,
        bn_mode="frozen",
        projector_input="sqrt_dim",
        exclude_dirs=("kodak24",),  # Kodak is held out for evaluation; pass the folders with --data
        patch_size=128,
        n_refs=2,
        n_comps=3,
        n_levels=4,
        lr=1e-2,
        encoder_freeze_steps=86,
        encoder_lr_scale=0.03,
        readout="multilevel",
        epochs=2,
        t0_epochs=2,
        max_minutes=90.0,
        device="cpu",
        threads=1,
        amp="off",
        num_workers=1,
        out_dir="runs/pretrain-cpu",
        checkpoint_every=25,
        log_every=5,
    )


def _tiny() -> PretrainConfig:
    # For tests and smoke runs: random-init Lite0 on 32 px crops, 2 x 2 x 2 items (40 crops a step).
    return PretrainConfig(
        encoder="efficientnet_lite0",
        pretrained=False,
        patch_size=32,
        n_refs=2,
        n_comps=2,
        n_levels=2,
        max_distortions=3,
        items_per_step=2,
        lr=1e-3,
        epochs=1,
        max_steps=4,
        seed=0,
        device="cpu",
        threads=1,
        amp="off",
        channels_last=False,
        num_workers=0,
        out_dir="runs/pretrain-tiny",
        checkpoint_every=2,
        log_every=1,
    )


PRESETS: dict[str, typing.Callable[[], PretrainConfig]] = {"paper": _paper, "cpu": _cpu, "tiny": _tiny}


def start_weights_warning(cfg: PretrainConfig) -> str | None:
    """A warning when the encoder starts from random initialisation, else None."""
    if cfg.pretrained or cfg.weights:
        return None
    return (
        f"the {cfg.encoder} encoder starts from random initialisation (no --weights given); the paper's "
        "reference code starts from ImageNet weights: pass --weights FILE with start weights to match it"
    )


def preset(name: str) -> PretrainConfig:
    """The named preset (``paper``, ``cpu`` or ``tiny``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------------
# dict / JSON round trip (generic over nested frozen dataclasses)


def config_to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-safe dict of a (nested) dataclass: tuples become lists, nested dataclasses dicts."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a dataclass instance, got {type(obj).__name__}")
    return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a dict made by :func:`config_to_dict`; unknown keys are an error,
    missing keys take their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
    kwargs = {k: _coerce(hints[k], v, k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"invalid {cls.__name__}: {e}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Turn a JSON value into the declared field type ``tp`` (nested dataclass, tuple, optional, scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else config_from_dict(tp, value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        elem = args[0] if args else Any
        return tuple(_coerce(elem, v, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def load_config(path: str | Path) -> PretrainConfig:
    """Read a config JSON file (for example a run's ``config.json``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    return PretrainConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------------
# overrides


def apply_overrides(cfg: Any, overrides: typing.Iterable[str]) -> Any:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied (dotted keys reach nested configs).

    Values are parsed by the field's declared type: ``true/false`` for booleans, ``none``/``null``
    for optional fields, comma-separated lists for tuples.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        cfg = _set_dotted(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set_dotted(obj: Any, parts: list[str], raw: str, full_key: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        raise ConfigError(f"unknown config key {full_key!r} (valid here: {', '.join(sorted(names))})")
    hints = typing.get_type_hints(type(obj))
    if len(parts) > 1:
        child = getattr(obj, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{full_key!r}: {head!r} is not a nested config")
        new_value = _set_dotted(child, parts[1:], raw, full_key)
    else:
        tp = hints[head]
        value: Any = raw
        if raw.lower() in {"none", "null"} and type(None) in typing.get_args(tp):
            value = None
        elif dataclasses.is_dataclass(tp):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError(f"{full_key!r}: expected a JSON object") from None
        new_value = _coerce(tp, value, full_key)
    try:
        return dataclasses.replace(obj, **{head: new_value})
    except TypeError as e:
        raise ConfigError(f"{full_key!r}: {e}") from None
