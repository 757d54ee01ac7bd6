"""``shamisa distort``: listing the types, one distortion, error messages and the contact sheet."""

from __future__ import annotations

import json

import pytest
import torch

from shamisa.distortions import (
    DISTORTION_NAMES,
)
from conftest import natural_like_image


@pytest.fixture
def png(tmp_path):
    from shamisa.images import save_image

    path = tmp_path / "in.png"
    save_image(natural_like_image(64, 80, seed=3), path)
    return path


def _run(args):
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    return CliRunner().invoke(app, args)


def test_cli_list():
    res = _run(["distort", "--list"])
    assert res.exit_code == 0, res.output
    for name in DISTORTION_NAMES:
        assert name in res.output
    res = _run(["distort", "--list", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert [d["name"] for d in data] == list(DISTORTION_NAMES)
    assert data[8]["levels"] == [43.0, 36.0, 24.0, 7.0, 4.0] and data[8]["integer"] is True


def test_cli_single_distortion(png, tmp_path):
    from shamisa.images import load_image

    out = tmp_path / "out.png"
    res = _run(["distort", str(png), "--type", "gaublur", "--severity", "3", "-o", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    y, x = load_image(out), load_image(png)
    assert y.shape == x.shape and ((y - x) ** 2).mean() > 1e-4
    out2 = tmp_path / "out2.png"
    res = _run(["distort", str(png), "--type", "whitenoise", "--value", "0.01", "-o", str(out2), "--seed", "1"])
    assert res.exit_code == 0, res.output
    out3 = tmp_path / "out3.png"
    res = _run(["distort", str(png), "--type", "whitenoise", "--value", "0.01", "-o", str(out3), "--seed", "1"])
    assert torch.equal(load_image(out2), load_image(out3))


def test_cli_jpeg2000_option(png, tmp_path):
    """``--jpeg2000 approx`` writes the wavelet approximation, the default the real codec, and the option
    changes nothing for the process afterwards (the next call without it is the codec again)."""
    from shamisa.distortions.codecs import has_jpeg2000, jpeg2000_pillow
    from shamisa.distortions.wavelet_codec import jpeg2000_approx
    from shamisa.images import load_image

    if not has_jpeg2000():
        pytest.skip("Pillow without OpenJPEG")
    x = load_image(png)[None]
    v = torch.tensor([120.0], dtype=torch.float64)
    outs = {}
    for label, extra in (("approx", ["--jpeg2000", "approx"]), ("default", [])):
        out = tmp_path / f"{label}.png"
        res = _run(["distort", str(png), "--type", "jpeg2000", "--value", "120", "-o", str(out), *extra])
        assert res.exit_code == 0, res.output
        outs[label] = load_image(out)[None]
    # saved as 8-bit PNG: compare with the references rounded to 8 bits
    q = lambda t: (t.clamp(0, 1) * 255).round() / 255  # noqa: E731
    torch.testing.assert_close(outs["approx"], q(jpeg2000_approx(x, v.float())), atol=1 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(outs["default"], q(jpeg2000_pillow(x, v)), atol=1 / 255 + 1e-6, rtol=0)
    assert not torch.equal(outs["approx"], outs["default"])


def test_cli_error_messages(png, tmp_path, capsys):
    from shamisa.cli.app import main

    for args, message in [
        ([str(png), "--type", "gausblur", "--severity", "1"], "did you mean gaublur"),
        ([str(png), "--type", "gaublur", "--severity", "5"], "severity"),
        ([str(tmp_path / "missing.png"), "--type", "gaublur", "--severity", "1"], "no such file"),
        ([str(png), "--type", "gaublur"], "--severity or --value"),
        ([str(png), "--type", "gaublur", "--severity", "1", "--value", "2"], "not both"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["distort", *args, "-o", str(tmp_path / "o.png")])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_cli_sheet(png, tmp_path):
    from PIL import Image

    out = tmp_path / "sheet.png"
    res = _run(["distort", str(png), "--sheet", str(out), "--cell", "48", "--seed", "0"])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        w, h = im.size
    assert w > 5 * 48 and h > 26 * 48
