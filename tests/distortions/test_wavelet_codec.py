"""The labelled JPEG2000 approximation (shamisa.distortions.wavelet_codec): the wavelet, the rate model,
batch behaviour, and closeness to the real codec on real photos."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shamisa.distortions import apply_distortion
from shamisa.distortions import wavelet_codec as wc
from shamisa.distortions.codecs import has_jpeg2000, jpeg2000_pillow
from shamisa.distortions.levels import LEVELS
from shamisa.distortions.wavelet_codec import (
    dwt2,
    idwt2,
    jpeg2000_approx,
    laplacian_deadzone_entropy,
    synthesis_norms,
    wavelet_levels,
)

PHOTOS = Path(__file__).parents[1] / "fixtures" / "clive_mini" / "Images"


def photo_crops(side: int) -> torch.Tensor:
    """Centre crops of the committed CLIVE photos (real content, unlike generated test images)."""
    crops = []
    for p in sorted(PHOTOS.iterdir()):
        if p.suffix.lower() not in {".jpg", ".bmp", ".png"}:
            continue
        a = torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255
        h, w = a.shape[1:]
        crops.append(a[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side])
    return torch.stack(crops)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize(("h", "w"), [(64, 96), (45, 77), (224, 224)])
def test_wavelet_reconstructs_perfectly(h: int, w: int) -> None:
    levels = wavelet_levels(h, w)
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    bands = dwt2(x, levels)
    # every level halves each side, the low-pass half taking the odd sample: ceil(N / 2) low, floor high
    side_h, side_w = h, w
    for lh, hl, hh in bands[:-1]:
        lo_h, lo_w = (side_h + 1) // 2, (side_w + 1) // 2
        assert lh.shape[-2:] == (side_h // 2, lo_w) and hl.shape[-2:] == (lo_h, side_w // 2)
        assert hh.shape[-2:] == (side_h // 2, side_w // 2)
        side_h, side_w = lo_h, lo_w
    assert bands[-1][0].shape == (2, 3, side_h, side_w)
    torch.testing.assert_close(idwt2(bands), x, rtol=0, atol=1e-12)


def test_wavelet_matches_a_direct_symmetric_extension() -> None:
    """One analysis step equals the 9/7 lifting written out on an explicitly mirrored signal (odd and even
    lengths): the in-place boundary handling is the whole-sample symmetric extension."""
    pad, k = 6, 1.230174104914001
    for n in (9, 10):
        x = torch.rand(1, n, dtype=torch.float64)
        low, high = wc._lift_forward(x.clone(), -1)
        v = torch.cat([x[0, 1 : pad + 1].flip(0), x[0], x[0, -pad - 1 : -1].flip(0)]).tolist()
        for coef, parity in ((-1.586134342059924, 1), (-0.052980118572961, 0), (0.882911075530934, 1),
                             (0.443506852043971, 0)):
            for i in range(1, len(v) - 1):
                if (i - pad) % 2 == parity:
                    v[i] += coef * (v[i - 1] + v[i + 1])
        expect_low = [v[i] / k for i in range(pad, pad + n, 2)]
        expect_high = [v[i] * k / 2 for i in range(pad + 1, pad + n, 2)]
        assert low.shape == (1, (n + 1) // 2) and high.shape == (1, n // 2)
        torch.testing.assert_close(low[0], torch.tensor(expect_low, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(high[0], torch.tensor(expect_high, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [7, 8, 28, 45])
def test_level_matrices_are_the_lifting(n: int) -> None:
    """The coarse levels' matrices give the lifting's coefficients and invert each other (odd and even n)."""
    x = torch.rand(3, n, dtype=torch.float64)
    low, high = wc._lift_forward(x.clone(), -1)
    coef = x @ wc.level_matrix(n, dtype=torch.float64).t()
    torch.testing.assert_close(coef, torch.cat([low, high], -1), rtol=0, atol=1e-12)
    back = coef @ wc.level_matrix(n, inverse=True, dtype=torch.float64).t()
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)


def test_the_pyramid_is_the_same_with_and_without_matrices(monkeypatch) -> None:
    x = torch.rand(2, 3, 224, 200, dtype=torch.float64)
    with_matrices = wc.dwt2(x, 7)
    monkeypatch.setattr(wc, "MATRIX_SIDE", 0)
    lifted = wc.dwt2(x, 7)
    for a, b in zip(itertools.chain(*with_matrices), itertools.chain(*lifted), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    torch.testing.assert_close(wc.idwt2(with_matrices), x, rtol=0, atol=1e-10)


def test_synthesis_norms_equal_the_2d_basis_norms() -> None:
    levels, size = 3, 64
    zero = dwt2(torch.zeros(1, size, size, dtype=torch.float64), levels)
    for i, (level, norms) in enumerate(zip(zero, synthesis_norms(levels), strict=True)):
        for k, band in enumerate(level):
            probe = [[b.clone() for b in lev] for lev in zero]
            probe[i][k][0, band.shape[-2] // 2, band.shape[-1] // 2] = 1.0
            assert float(idwt2(probe).norm()) == pytest.approx(float(norms[k]), rel=1e-5)


def test_wavelet_levels_follow_the_real_codec() -> None:
    # resolutions = min(8, floor(log2(min side)) + 1), levels = resolutions - 1
    assert wavelet_levels(224, 224) == 7 and wavelet_levels(128, 300) == 7 and wavelet_levels(64, 64) == 6
    assert wavelet_levels(1, 1) == 0


@pytest.mark.parametrize("ratio", [0.3, 1.0, 2.5])
def test_deadzone_entropy_matches_the_direct_sum(ratio: float) -> None:
    t = math.exp(-ratio)
    probs = [1 - t] + [t**k * (1 - t) / 2 for k in range(1, 2000) for _ in (0, 1)]
    direct = -sum(p * math.log2(p) for p in probs if p > 0)
    model = float(laplacian_deadzone_entropy(torch.tensor(ratio, dtype=torch.float64)))
    assert model == pytest.approx(direct, rel=1e-6)


def test_output_range_batch_and_determinism() -> None:
    x = photo_crops(128)[:4]
    ratios = torch.tensor([16.0, 32.0, 120.0, 170.0])
    y = jpeg2000_approx(x, ratios)
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= float(y.min()) and float(y.max()) <= 1
    assert torch.equal(y, torch.round(y * 255) / 255)  # 8-bit steps, like a decoded image
    for i in range(4):
        torch.testing.assert_close(jpeg2000_approx(x[i : i + 1], ratios[i : i + 1]), y[i : i + 1], rtol=0, atol=1e-6)
    assert torch.equal(jpeg2000_approx(x, ratios), y)
    odd = torch.rand(2, 3, 45, 77)  # odd sides: the wavelet splits them unevenly
    assert jpeg2000_approx(odd, torch.tensor([20.0, 40.0])).shape == odd.shape


def test_quality_falls_with_the_ratio() -> None:
    x = photo_crops(224)
    values = [psnr(jpeg2000_approx(x, torch.full((len(x),), float(r))), x).mean() for r in LEVELS["jpeg2000"]]
    assert all(a > b for a, b in itertools.pairwise(values))


@pytest.mark.skipif(not has_jpeg2000(), reason="Pillow without OpenJPEG")
@pytest.mark.parametrize("side", [128, 224])
def test_close_to_the_real_codec_on_photos(side: int) -> None:
    """Mean PSNR over the photos within 1.5 dB of OpenJPEG's at the levels the calibration covers
    (levels 1-4; at 128 px and ratio 170 the real codec spends most of its ~290 bytes on headers and
    falls apart, which the approximation does not model)."""
    x = photo_crops(side)
    ratios = LEVELS["jpeg2000"] if side == 224 else LEVELS["jpeg2000"][:4]
    for r in ratios:
        rr = torch.full((len(x),), float(r))
        real, approx = psnr(jpeg2000_pillow(x, rr), x), psnr(jpeg2000_approx(x, rr), x)
        assert abs(float(approx.mean() - real.mean())) < 1.5, (side, r, float(real.mean()), float(approx.mean()))


def test_the_distortion_uses_the_chosen_implementation() -> None:
    """``jpeg2000_impl`` picks the function; the default is the real codec; an unknown name is refused."""
    x = photo_crops(64)[:2]
    v = torch.tensor([45.0, 45.0])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(apply_distortion(x, "jpeg2000", v, g, jpeg2000_impl="approx"), jpeg2000_approx(x, v))
    if has_jpeg2000():
        assert torch.equal(apply_distortion(x, "jpeg2000", v, g, jpeg2000_impl="openjpeg"), jpeg2000_pillow(x, v))
        assert torch.equal(apply_distortion(x, "jpeg2000", v, g), jpeg2000_pillow(x, v))
    with pytest.raises(ValueError, match="unknown jpeg2000"):
        apply_distortion(x, "jpeg2000", v, g, jpeg2000_impl="fast")
    with pytest.raises(ValueError, match="unknown jpeg2000"):
        apply_distortion(x, "gaublur", v, g, jpeg2000_impl="fast")  # refused whatever the type


@pytest.mark.skipif(not has_jpeg2000(), reason="Pillow without OpenJPEG")
def test_two_settings_in_one_process_differ_for_jpeg2000_only() -> None:
    """Two engines with different ``jpeg2000_impl`` in one process, interleaved: ``jpeg2000`` differs between
    them (each equals its own implementation), every other type gives identical outputs; structured batches
    likewise differ only in the items whose chain holds ``jpeg2000``."""
    from shamisa.distortions import DISTORTION_NAMES, apply_levels, build_structured_batch, sample_compositions

    x = photo_crops(64)[:2]
    for name in DISTORTION_NAMES:
        v = torch.tensor(LEVELS[name][2:4], dtype=torch.float64)
        a = apply_distortion(x, name, v, seeds=torch.tensor([7, 8]), jpeg2000_impl="openjpeg")
        b = apply_distortion(x, name, v, seeds=torch.tensor([7, 8]), jpeg2000_impl="approx")
        la = apply_levels(x, name, v, seeds=torch.arange(4), jpeg2000_impl="openjpeg")
        lb = apply_levels(x, name, v, seeds=torch.arange(4), jpeg2000_impl="approx")
        if name == "jpeg2000":
            assert torch.equal(a, jpeg2000_pillow(x, v)) and torch.equal(b, jpeg2000_approx(x, v))
            assert not torch.equal(a, b) and not torch.equal(la, lb)
        else:
            assert torch.equal(a, b) and torch.equal(la, lb), name
    j2k = DISTORTION_NAMES.index("jpeg2000")
    with_j2k = without = 0
    for seed in range(40):
        comps = sample_compositions(2, generator=torch.Generator().manual_seed(seed), max_distortions=4)
        sa = build_structured_batch(x[:1], x[1:], comps, torch.Generator().manual_seed(1), jpeg2000_impl="openjpeg")
        sb = build_structured_batch(x[:1], x[1:], comps, torch.Generator().manual_seed(1), jpeg2000_impl="approx")
        for f in range(comps.n_comps):
            if (comps.type_ids[f, : int(comps.n_dist[f])] == j2k).any():
                assert not torch.equal(sa.dist[:, f], sb.dist[:, f])
                with_j2k += 1
            else:
                assert torch.equal(sa.dist[:, f], sb.dist[:, f])
                without += 1
    assert with_j2k >= 2 and without >= 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_same_result_on_the_gpu() -> None:
    x = photo_crops(128)[:3]
    v = torch.tensor([16.0, 45.0, 120.0])
    torch.testing.assert_close(jpeg2000_approx(x.cuda(), v.cuda()).cpu(), jpeg2000_approx(x, v), rtol=0, atol=2 / 255)
