"""``shamisa score --map DIR``: one quality-map overlay per scored image, beside the usual rows."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import natural_like_image


def test_score_cli_writes_one_overlay_per_image_beside_the_rows(tmp_path):
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    for i, sub in enumerate(("a", "b")):
        (tmp_path / sub).mkdir()
        arr = (natural_like_image(240, 260, seed=i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / sub / "same.png")  # two inputs with one stem
    (tmp_path / "bad.png").write_text("no image")
    out = CliRunner().invoke(app, ["score", str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png"),
                                   str(tmp_path / "bad.png"), "--map", str(tmp_path / "maps"), "-f", "csv",
                                   "--device", "cpu"])
    assert out.exit_code == 1  # one image failed; the others are scored and mapped
    rows = [line for line in out.stdout.splitlines() if line]
    assert rows[0].startswith("path,score") and len(rows) == 4
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["same-2.map.png", "same.map.png"]
    assert Image.open(tmp_path / "maps" / "same.map.png").format == "PNG"
    assert "wrote 2 quality map(s)" in out.stderr
