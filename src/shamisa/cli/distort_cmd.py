"""``shamisa distort``: apply one distortion to an image, draw a contact sheet, or list the types.

Examples::

    shamisa distort photo.png --type jpeg --severity 3.5 -o out.png
    shamisa distort photo.png --type gaublur --value 2.0 -o out.png
    shamisa distort photo.png --sheet sheet.png
    shamisa distort --list
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer

SHEET_LABEL_H = 14
SHEET_ROW_LABEL_W = 150


def _contact_sheet(image: Any, cell: int, seed: int, jpeg2000_impl: str = "openjpeg") -> Any:
    """A PIL image: one row per type, its 5 levels as columns, labelled with type, group and values."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    from shamisa.distortions import DISTORTIONS, apply_distortion
    from shamisa.images import resize

    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = resize(image[:, top : top + side, left : left + side], (cell, cell))
    font = ImageFont.load_default()
    cols, rows = 5, len(DISTORTIONS)
    sheet_w = SHEET_ROW_LABEL_W + cols * cell
    sheet_h = SHEET_LABEL_H + rows * (cell + SHEET_LABEL_H)
    sheet = Image.new("RGB", (sheet_w, sheet_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c in range(cols):
        draw.text((SHEET_ROW_LABEL_W + c * cell + 3, 1), f"level {c} (s={c})", fill=(0, 0, 0), font=font)
    batch = square[None].expand(cols, -1, -1, -1).contiguous()
    for r, (name, spec) in enumerate(DISTORTIONS.items()):
        y0 = SHEET_LABEL_H + r * (cell + SHEET_LABEL_H)
        values = torch.tensor(spec.levels, dtype=torch.float64)
        # one seed for the whole row: stochastic types show the same draws at growing severity
        out = apply_distortion(
            batch, name, values, seeds=torch.full((cols,), seed + r, dtype=torch.int64), jpeg2000_impl=jpeg2000_impl
        )
        draw.text((4, y0 + SHEET_LABEL_H + cell // 2 - 12), name, fill=(0, 0, 0), font=font)
        draw.text((4, y0 + SHEET_LABEL_H + cell // 2 + 2), spec.group, fill=(90, 90, 90), font=font)
        for c in range(cols):
            x0 = SHEET_ROW_LABEL_W + c * cell
            arr = (out[c].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            sheet.paste(Image.fromarray(arr), (x0, y0 + SHEET_LABEL_H))
            draw.text((x0 + 3, y0 + 1), f"{name} {spec.levels[c]:g}", fill=(0, 0, 0), font=font)
    return sheet


def _list_types(as_json: bool) -> None:
    from shamisa.distortions import DISTORTIONS

    rows = [
        {
            "name": s.name,
            "group": s.group,
            "parameter": s.parameter,
            "levels": list(s.levels),
            "integer": s.integer,
            "stochastic": s.stochastic,
        }
        for s in DISTORTIONS.values()
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="distortion types (severity 0..4 -> level table, linear interpolation)")
    for col in ("type", "group", "parameter", "levels (s = 0, 1, 2, 3, 4)", "integer", "random"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["group"],
            r["parameter"],
            ", ".join(f"{v:g}" for v in r["levels"]),
            "yes" if r["integer"] else "",
            "yes" if r["stochastic"] else "",
        )
    Console(width=140).print(table)


def register(app: typer.Typer) -> None:
    """Add the ``distort`` command to ``app``."""

    @app.command("distort")
    def distort(
        image: Path | None = typer.Argument(None, help="Input image (any format Pillow reads)."),
        type_: str | None = typer.Option(None, "--type", "-t", help="Distortion type (see --list)."),
        severity: float | None = typer.Option(
            None, "--severity", "-s", help="Continuous severity index in [0, 4] (level-table interpolation)."
        ),
        value: float | None = typer.Option(None, "--value", help="Raw parameter value instead of a severity."),
        output: Path | None = typer.Option(None, "--output", "-o", help="Output image (format from the extension)."),
        sheet: Path | None = typer.Option(None, "--sheet", help="Write a labelled contact sheet of all types x 5 levels."),
        cell: int = typer.Option(160, "--cell", min=16, max=1024, help="Contact-sheet cell size in pixels."),
        list_: bool = typer.Option(False, "--list", help="List the types, groups and level tables."),
        as_json: bool = typer.Option(False, "--json", help="With --list: print JSON instead of a table."),
        seed: int = typer.Option(0, "--seed", help="Seed for the random draws of stochastic types."),
        jpeg2000: str = typer.Option(
            "openjpeg", "--jpeg2000", help="jpeg2000 type: openjpeg (the real codec) | approx (wavelet approximation)."
        ),
    ) -> None:
        """Apply one distortion to an image, draw a contact sheet of every type, or list the types."""
        from shamisa.distortions.codecs import JPEG2000_IMPLS
        from shamisa.errors import ConfigError

        if jpeg2000 not in JPEG2000_IMPLS:
            raise ConfigError(f"--jpeg2000 must be one of {', '.join(JPEG2000_IMPLS)}, not {jpeg2000!r}")

        if list_:
            _list_types(as_json)
            return
        if image is None:
            raise ConfigError("give an IMAGE (or --list)")

        import torch

        from shamisa.distortions import get_spec, severity_to_value
        from shamisa.distortions.levels import MAX_SEVERITY
        from shamisa.fileio import atomic_path
        from shamisa.images import load_image, save_image

        if sheet is not None:
            if type_ is not None or output is not None:
                raise ConfigError("--sheet draws every type; do not combine it with --type / -o")
            _pil_format(sheet)
            img = load_image(image)
            pil = _contact_sheet(img, cell, seed, jpeg2000)
            fmt = _pil_format(sheet)
            with atomic_path(sheet) as tmp:
                pil.save(tmp, format=fmt)
            print(str(sheet), file=sys.stderr)
            return
        if type_ is None:
            raise ConfigError("give --type NAME (see --list), or --sheet OUT.png")
        spec = get_spec(type_)
        if output is None:
            raise ConfigError("give an output file with -o OUT")
        if (severity is None) == (value is None):
            raise ConfigError("give exactly one of --severity or --value (not both)")
        if severity is not None:
            if not 0.0 <= severity <= MAX_SEVERITY:
                raise ConfigError(f"--severity must be in [0, {MAX_SEVERITY:g}], got {severity:g}")
            v, s2 = severity_to_value(spec.name, torch.tensor([severity]))
        else:
            assert value is not None
            if not math.isfinite(value):
                raise ConfigError(f"--value must be a finite number, got {value}")
            v = torch.tensor([value], dtype=torch.float64)
            s2 = None
        _pil_format(output)
        img = load_image(image)
        out = _apply(img, spec.name, v, seed, jpeg2000)
        save_image(out, output)
        detail = f"severity {float(s2):.4g}, " if s2 is not None else ""
        print(f"{output}: {spec.name} ({detail}{spec.parameter} = {float(v):.6g})", file=sys.stderr)


def _apply(img: Any, name: str, v: Any, seed: int, jpeg2000_impl: str) -> Any:
    import torch

    from shamisa.distortions import apply_distortion

    return apply_distortion(img[None], name, v, torch.Generator().manual_seed(seed), jpeg2000_impl=jpeg2000_impl)[0]


def _pil_format(path: Path) -> str:
    from PIL import Image

    from shamisa.errors import ConfigError

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: unknown image extension {path.suffix!r} (use .png, .jpg, ...)")
    return fmt
