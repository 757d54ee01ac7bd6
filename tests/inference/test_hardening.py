"""Bad inputs: every one gets a clear per-item result, the rest of the job completes, no traceback.

The table of cases below is also the source of docs/bad-inputs.md: ``python tests/inference/test_hardening.py``
builds every case, runs ``shamisa score`` on them with a tiny random model and prints the markdown table.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import natural_like_image  # noqa: E402

from shamisa.inference.card import ModelCard  # noqa: E402
from shamisa.inference.model_file import save_model  # noqa: E402
from shamisa.inference.preprocess import MAX_ASPECT, Prepared, load_image_for_scoring, prepare_path  # noqa: E402
from shamisa.errors import DatasetError, ImageLoadError  # noqa: E402

CROP = 32
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------------------ builders


def _rgb(h: int = 64, w: int = 80, seed: int = 0) -> Image.Image:
    arr = (natural_like_image(h, w, seed=seed).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return Image.fromarray(arr)


def _encoded(fmt: str, h: int = 64, w: int = 80, **kw) -> bytes:
    buf = io.BytesIO()
    _rgb(h, w).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _write(data: bytes) -> Callable[[Path, str], Path]:
    def build(folder: Path, name: str) -> Path:
        p = folder / name
        p.write_bytes(data)
        return p

    return build


def _save(img_fn: Callable[[], Image.Image], **kw) -> Callable[[Path, str], Path]:
    def build(folder: Path, name: str) -> Path:
        p = folder / name
        img_fn().save(p, **kw)
        return p

    return build


def _exif_rotated(folder: Path, name: str) -> Path:
    img = _rgb(48, 96)
    exif = img.getexif()
    exif[0x0112] = 6  # stored 96 wide x 48 high, displayed rotated by 90 degrees
    p = folder / name
    img.save(p, exif=exif)
    return p


def _animated_gif(folder: Path, name: str) -> Path:
    p = folder / name
    frames = [_rgb(60, 60, seed=s).convert("P") for s in range(3)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return p


def _gray16(folder: Path, name: str) -> Path:
    p = folder / name
    arr = (np.linspace(0, 65535, 64 * 80).reshape(64, 80)).astype(np.uint16)
    Image.fromarray(arr).save(p)
    return p


def _broken_link(folder: Path, name: str) -> Path:
    p = folder / name
    os.symlink(folder / "does-not-exist.png", p)
    return p


def _unreadable(folder: Path, name: str) -> Path:
    p = folder / name
    _rgb().save(p)
    os.chmod(p, 0)
    return p


def _directory(folder: Path, name: str) -> Path:
    p = folder / name
    p.mkdir()
    return p


def _fifo(folder: Path, name: str) -> Path:
    p = folder / name
    os.mkfifo(p)
    return p


def _non_utf8(folder: Path, name: str) -> Path:
    raw = os.fsencode(folder) + b"/caf\xe9-latin1.png"
    _rgb().save(os.fsdecode(raw), format="PNG")
    return Path(os.fsdecode(raw))


@dataclass(frozen=True)
class Case:
    name: str  # file name used
    what: str  # description for the docs
    build: Callable[[Path, str], Path]
    expect: str  # "ok", "ok:<flag>" or "error:<substring of the reason>"
    skip: str | None = None


CASES: list[Case] = [
    Case("random.jpg", "random bytes with an image extension", _write(os.urandom(3000)), "error:not a recognised image format"),
    Case("empty.png", "empty file (0 bytes)", _write(b""), "error:empty file"),
    Case("truncated.png", "PNG cut in half", _write(_encoded("PNG")[: len(_encoded("PNG")) // 2]), "error:cannot decode"),
    Case("truncated.jpg", "JPEG cut in half", _write(_encoded("JPEG")[: len(_encoded("JPEG")) // 2]), "error:truncated"),
    Case("header-only.jpg", "JPEG with only its first 20 bytes", _write(_encoded("JPEG")[:20]), "error:"),
    Case("one-pixel.png", "1x1 image", _save(lambda: Image.new("RGB", (1, 1), (9, 9, 9))), "error:smaller than the minimum side of 8 px"),
    Case("tiny.png", "12x10 image (smaller than a crop)", _save(lambda: _rgb(10, 12)), "ok:enlarged"),
    Case("bomb.png", "PNG header claiming 30000x30000 pixels (decompression bomb)", _write(bomb_png()), "error:decompression bomb"),
    Case("72mp.png", "PNG header claiming 9000x8000 pixels (over the 64 MP limit for non-JPEG files)",
         _write(bomb_png(9000, 8000)), "error:over the limit of 64000000"),
    Case("elongated.png", "2000x10 image (200:1 aspect ratio)", _save(lambda: _rgb(10, 2000)), "error:elongated"),
    Case("gray16.png", "16-bit grayscale PNG", _gray16, "ok"),
    Case("cmyk.jpg", "CMYK JPEG", _save(lambda: _rgb().convert("CMYK")), "ok"),
    Case("rgba.png", "RGBA PNG (alpha composited over white)", _save(lambda: _rgb().convert("RGBA")), "ok"),
    Case("palette.png", "palette (P mode) PNG", _save(lambda: _rgb().convert("P")), "ok"),
    Case("animated.gif", "animated GIF, 3 frames (first frame scored)", _animated_gif, "ok"),
    Case("rotated.jpg", "JPEG with EXIF orientation 6 (rotated on load)", _exif_rotated, "ok"),
    Case("large.jpg", "3000x2200 JPEG (decoded at 1/2 size by libjpeg, then downscaled to --max-side 1024)",
         _save(lambda: _rgb(2200, 3000), quality=80), "ok:downscaled"),
    Case("text.png", "a text file named .png", _write(b"hello, this is not an image\n" * 20), "error:not a recognised image format"),
    Case("html.jpg", "an HTML page named .jpg", _write(b"<!doctype html><html><body>404</body></html>"), "error:not a recognised image format"),
    Case("unreadable.png", "file without read permission (chmod 000)", _unreadable, "error:permission denied",
         skip="running as root: root can read a chmod 000 file" if IS_ROOT else None),
    Case("broken-link.png", "broken symbolic link", _broken_link, "error:broken symbolic link"),
    Case("fifo.png", "a named pipe (FIFO), given explicitly", _fifo, "error:not a regular file"),
    Case("caf\\xe9-latin1.png", "valid PNG whose file name is not UTF-8 (Latin-1 byte 0xE9)", _non_utf8, "ok"),
    Case("missing.png", "a path that does not exist", lambda folder, name: folder / name, "error:no such file"),
]


def _tiny_model(path: Path) -> Path:
    from shamisa.models import build_encoder
    from shamisa.evaluation.ridge import RidgeHead

    torch.manual_seed(0)
    enc = build_encoder("efficientnet_lite0").eval()
    head = RidgeHead(np.random.default_rng(0).normal(size=2560) * 20, 50.0, 1.0)
    card = ModelCard(name="tiny", encoder=enc.name, feature_dim=1280, crop=CROP, dataset="synthetic",
                            mos_type="mos", score_range=(0.0, 100.0))
    return save_model(path, enc, head, card)


def build_cases(folder: Path) -> list[tuple[Case, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in CASES:
        if c.skip:
            continue
        out.append((c, c.build(folder, c.name)))
    return out


def run_cli(paths: list[Path], model: Path, *extra: str):
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    args = ["score", *[os.fspath(p) for p in paths], "--model", str(model), "-f", "csv", "--max-side", "1024", *extra]
    return CliRunner().invoke(app, args)


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, model_file):
    folder = tmp_path_factory.mktemp("bad")
    built = build_cases(folder)
    good = _save(lambda: _rgb(70, 90, seed=5))(folder, "good.png")
    paths = [good] + [p for _, p in built] + [good]
    result = run_cli(paths, model_file)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    return built, result, rows


def test_job_completes_with_exit_code_1(cli_run):
    built, result, rows = cli_run
    assert result.exit_code == 1
    assert len(rows) == len(built) + 2
    assert rows[0]["score"] and rows[-1]["score"]  # good images before and after every bad one
    assert rows[0]["score"] == rows[-1]["score"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_case(cli_run, case):
    if case.skip:
        pytest.skip(case.skip)
    built, result, rows = cli_run
    index = [c.name for c, _ in built].index(case.name)
    row = rows[index + 1]
    kind, _, detail = case.expect.partition(":")
    if kind == "ok":
        assert row["error"] == "" and 0.0 <= float(row["score"]) <= 1.0, row
        assert row["flags"] == detail, row
    else:
        assert row["score"] == "" and row["error"], row
        assert detail.lower() in row["error"].lower(), row
        assert "\n" not in row["error"]


def test_failures_listed_on_stderr(cli_run):
    built, result, rows = cli_run
    n_bad = sum(1 for c, _ in built if c.expect.startswith("error"))
    assert f"{n_bad} failed:" in result.stderr


def test_exif_rotation_applied(cli_run):
    built, _, rows = cli_run
    row = rows[[c.name for c, _ in built].index("rotated.jpg") + 1]
    assert (row["width"], row["height"]) == ("48", "96")


def test_non_utf8_name_is_printable(cli_run):
    built, _, rows = cli_run
    row = rows[[c.name for c, _ in built].index("caf\\xe9-latin1.png") + 1]
    assert row["path"].endswith("caf\\xe9-latin1.png")


@pytest.mark.skipif(not IS_ROOT, reason="only meaningful as root")
def test_permission_case_skipped_as_root():
    """Documented: as root a chmod 000 file is still readable, so that case cannot be exercised here."""
    assert next(c for c in CASES if c.name == "unreadable.png").skip


@pytest.mark.skipif(IS_ROOT, reason="root can read chmod 000 files")
def test_unreadable_file_not_root(tmp_path):
    p = _unreadable(tmp_path, "u.png")
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image_for_scoring(p)


def test_folder_named_like_an_image(tmp_path):
    """A folder is always searched for images, never decoded, also when its name ends in .jpg."""
    from shamisa.cli.score_cmd import expand_inputs

    _directory(tmp_path, "folder.jpg")
    _rgb().save(tmp_path / "folder.jpg" / "inside.png")
    assert [Path(i).name for i in expand_inputs([str(tmp_path)], recursive=False)] == []
    assert [Path(i).name for i in expand_inputs([str(tmp_path)], recursive=True)] == ["inside.png"]
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image_for_scoring(tmp_path / "folder.jpg")


_WALK_SCRIPT = """
import json, os, sys
from shamisa.cli.score_cmd import expand_inputs
import shamisa.errors, shamisa.images  # imported while the interpreter's files are still readable
root = sys.argv[1]
if os.getuid() == 0:  # permission bits do not bind root: continue as the unprivileged uid 65534
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
if os.access(os.path.join(root, "locked"), os.R_OK):
    print(json.dumps("readable"))
else:
    items = list(expand_inputs([root], recursive=True))
    print(json.dumps([i if isinstance(i, str) else "error:" + str(i) for i in items]))
"""


def test_unreadable_folder_in_walk(model_file):
    """A sub-folder that cannot be listed becomes one error item and the walk goes on. Permission bits do
    not bind root, so the walk runs in a child process that drops to the unprivileged uid 65534 when it is
    root (after its imports)."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="shamisa-walk-"))
    try:
        root.chmod(0o755)
        (root / "ok").mkdir(mode=0o755)
        _rgb().save(root / "ok" / "a.png")
        (root / "ok" / "a.png").chmod(0o644)
        (root / "locked").mkdir()
        _rgb().save(root / "locked" / "b.png")
        (root / "locked").chmod(0o000)

        src = str(Path(__file__).resolve().parents[2] / "src")
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        r = subprocess.run([sys.executable, "-c", _WALK_SCRIPT, str(root)], capture_output=True, text=True,
                           env=env, cwd="/", timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        if out == "readable":
            pytest.skip("this user can read a folder with mode 000 (capabilities)")
        assert [Path(i).name for i in out if not i.startswith("error:")] == ["a.png"]
        errors = [i for i in out if i.startswith("error:")]
        assert len(errors) == 1 and "locked" in errors[0]
    finally:
        (root / "locked").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ fuzzing


def _prepare(path: Path) -> Prepared | None:
    """The scorer's per-file path; returns None on a clean ImageLoadError, raises anything else."""
    try:
        return prepare_path(path, CROP, 256)
    except ImageLoadError as e:
        assert e.reason and "\n" not in e.reason
        return None


def _check_prepared(p: Prepared | None) -> None:
    if p is not None:
        assert p.crops.shape == (10, 3, CROP, CROP)
        assert torch.isfinite(p.crops).all() and p.crops.min() >= 0 and p.crops.max() <= 1


EXTS = [".jpg", ".png", ".gif", ".bmp", ".tif", ".webp", ".ppm", ".jp2"]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(min_size=0, max_size=4000), ext=st.sampled_from(EXTS))
def test_fuzz_random_bytes(tmp_path, data, ext):
    p = tmp_path / f"f{ext}"
    p.write_bytes(data)
    _check_prepared(_prepare(p))


_VALID = {fmt: _encoded(fmt, 48, 56) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")}


@FUZZ
@given(fmt=st.sampled_from(sorted(_VALID)), cut=st.floats(0.0, 1.0))
def test_fuzz_truncated(tmp_path, fmt, cut):
    data = _VALID[fmt]
    p = tmp_path / f"t.{fmt.lower()}"
    p.write_bytes(data[: int(len(data) * cut)])
    _check_prepared(_prepare(p))


@FUZZ
@given(fmt=st.sampled_from(sorted(_VALID)), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_fuzz_corrupted_bytes(tmp_path, fmt, flips):
    data = bytearray(_VALID[fmt])
    for pos, x in flips:
        data[min(int(pos * len(data)), len(data) - 1)] ^= x
    p = tmp_path / f"c.{fmt.lower()}"
    p.write_bytes(bytes(data))
    _check_prepared(_prepare(p))


@FUZZ
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "I;16", "1", "LA", "F"]),
)
def test_fuzz_sizes_and_modes(tmp_path, h, w, mode):
    img = Image.new(mode, (w, h))
    ext = ".jpg" if mode == "CMYK" else ".tif" if mode == "F" else ".png"
    p = tmp_path / f"s{ext}"
    img.save(p)
    prep = _prepare(p)
    too_small = min(h, w) < 8
    too_long = max(h, w) > MAX_ASPECT * min(h, w)
    assert (prep is None) == (too_small or too_long)
    _check_prepared(prep)
    if prep is not None:
        scale = min(1.0, 256 / max(h, w))  # _prepare downscales to a longer side of 256 first
        short = min(max(1, round(h * scale)), max(1, round(w * scale)))
        assert ("enlarged" in prep.flags) == (short < CROP)
        assert ("downscaled" in prep.flags) == (max(h, w) > 256)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["good", "bytes", "trunc", "empty", "missing"]), min_size=1, max_size=6))
def test_fuzz_cli_mixed_folder(tmp_path_factory, model_file, kinds):
    folder = tmp_path_factory.mktemp("mix")
    paths = []
    for i, k in enumerate(kinds):
        p = folder / f"{i:02d}-{k}.png"
        if k == "good":
            _rgb(40, 50, seed=i).save(p)
        elif k == "bytes":
            p.write_bytes(os.urandom(100 + i))
        elif k == "trunc":
            p.write_bytes(_VALID["PNG"][:200])
        elif k == "empty":
            p.write_bytes(b"")
        paths.append(p)
    result = run_cli(paths, model_file)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [Path(r["path"]).name for r in rows] == [p.name for p in paths]
    ok = [bool(r["score"]) for r in rows]
    assert ok == [k == "good" for k in kinds]
    assert result.exit_code == (0 if all(ok) else 1)
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ labels (fit)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(
    st.one_of(st.floats(-1e9, 1e9).map(repr), st.sampled_from(["nan", "NaN", "inf", "-inf", "", "1,5", "n/a"]),
              st.text(max_size=6)),
    min_size=1, max_size=12))
def test_fuzz_label_values(tmp_path, values):
    """Every label that is not a finite number is skipped with its line number; the rest are kept."""
    from shamisa.datasets.base import parse_float
    from shamisa.datasets.generic import load_csv

    import tempfile

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    _rgb(16, 16).save(folder / "a.png")
    lines = ["path,score"]
    for v in values:
        cell = '"' + v.replace('"', '""').replace("\n", " ").replace("\r", " ") + '"'
        lines.append(f"a.png,{cell}")
    (folder / "l.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    good = [parse_float(v.replace("\n", " ").replace("\r", " ").strip()) is not None for v in values]
    if not any(good):
        with pytest.raises(DatasetError):
            load_csv(folder / "l.csv", skip_bad=True)
        return
    ds = load_csv(folder / "l.csv", skip_bad=True)
    assert np.isfinite(ds.scores).all()
    assert len(ds) == sum(good) and len(ds) + len(ds.skipped) == len(values)
    assert all(s.line >= 2 and s.reason for s in ds.skipped)


# ------------------------------------------------------------------------------------------ docs table


def markdown_table() -> str:
    """Run every case through `shamisa score` and render the docs table from what actually happened."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        model = _tiny_model(folder / "tiny.safetensors")
        built = build_cases(folder / "cases")
        result = run_cli([p for _, p in built], model)
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        lines = ["| input | what it is | result |", "|---|---|---|"]
        for (case, _), row in zip(built, rows, strict=True):
            if row["error"]:
                res = f"error: {row['error']}"
            else:
                res = "scored" + (f" (flag: {row['flags']})" if row["flags"] else "")
            lines.append(f"| `{case.name}` | {case.what} | {res} |")
        for case in CASES:
            if case.skip:
                lines.append(f"| `{case.name}` | {case.what} | not run here ({case.skip}); expected: {case.expect} |")
        lines.append("")
        lines.append(f"Exit code of the whole run: {result.exit_code}.")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown_table())
