"""Shared fixtures. Tests read no data outside the repository: images are generated here or committed under tests/fixtures."""

from __future__ import annotations

from pathlib import Path

import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests draw from a fixed seed by default, so a run on CI is reproducible; run
# `HYPOTHESIS_PROFILE=explore pytest` to draw fresh random cases (and many more of them).
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

FIXTURES = Path(__file__).parent / "fixtures"

DEVICE_CHOICES = ("cpu", "cuda", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        action="store",
        default="cpu",
        choices=DEVICE_CHOICES,
        help="devices the device-dependent tests run on: cpu (default), cuda, or all (cpu and, when "
        "one exists, cuda)",
    )


def _device_names(config: pytest.Config) -> list[str]:
    choice = config.getoption("--device")
    if choice == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [choice]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that asks for the ``device`` fixture runs once per device chosen with ``--device``."""
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _device_names(metafunc.config), indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The torch device a device-dependent test runs on (see ``--device``); skips when CUDA is asked
    for and there is none."""
    name = getattr(request, "param", "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: no CUDA device")
    return torch.device(name)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Unit tests use tiny tensors: one intra-op thread is as fast and never oversubscribes a
    shared machine (spinning OpenMP threads made some files several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def natural_like_image(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """A deterministic (3, H, W) image in [0, 1] with smooth regions, edges and texture, so that every
    distortion has something to act on."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(6.0 * xx + 2.0 * yy)
    gch = 0.5 + 0.4 * torch.cos(5.0 * yy - 3.0 * xx)
    b = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.08).float() * 0.6 + 0.2
    img = torch.stack([r, gch, b])
    img = img + 0.05 * torch.rand(3, h, w, generator=g)
    img[:, h // 3 : h // 3 + 4, :] = 0.95  # a sharp bright bar
    return img.clamp(0, 1)


@pytest.fixture
def rgb_image() -> torch.Tensor:
    return natural_like_image()


@pytest.fixture
def image_batch() -> torch.Tensor:
    return torch.stack([natural_like_image(seed=s) for s in range(3)])


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of small PNG/JPEG files."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        arr = (natural_like_image(240, 260, seed=i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return folder


def make_images(folder: Path, n: int = 6, h: int = 72, w: int = 80) -> Path:
    """A folder of ``n`` natural-looking pristine images (PNG and JPEG alternating)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (natural_like_image(h, w, seed=i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return folder
