"""The JSON API of ``shamisa serve`` through an in-process client: the happy paths, every kind of bad
request (each a 4xx JSON answer without a traceback, the server still serving), path confinement and
the bounded queue."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (the test client's transport) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import shamisa  # noqa: E402
from conftest import natural_like_image  # noqa: E402
from shamisa.cli.score_cmd import CSV_COLUMNS  # noqa: E402
from shamisa.serve import ServeConfig, create_app  # noqa: E402

HOSTS = ("testserver",)
TRACEBACK_MARKS = ("Traceback", 'File "', "line ", ".py")


def png_bytes(seed: int = 0, h: int = 240, w: int = 320, blur: bool = False) -> bytes:
    arr = (natural_like_image(h, w, seed=seed).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(arr)
    if blur:
        from PIL import ImageFilter

        im = im.filter(ImageFilter.GaussianBlur(4))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(w: int = 30_000, h: int = 30_000) -> bytes:
    """A valid PNG header announcing w x h pixels, with almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def check(resp, status: int | tuple[int, ...]):
    """Status as expected; errors are JSON {"error", "detail"}; no traceback text anywhere."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    if resp.headers.get("content-type", "").startswith("application/json"):
        for mark in TRACEBACK_MARKS[:2]:
            assert mark not in resp.text
    if resp.status_code >= 400:
        doc = resp.json()
        assert set(doc) >= {"error", "detail"} and isinstance(doc["error"], str) and doc["error"]
        text = json.dumps(doc)
        assert "Traceback" not in text and 'File "' not in text and "shamisa-serve-" not in text  # no upload temp path
        return doc
    return resp.json() if resp.headers.get("content-type", "").startswith("application/json") else resp


def healthy(client) -> None:
    assert check(client.get("/api/health"), 200)["status"] == "ok"


@pytest.fixture(scope="module")
def model():
    return shamisa.load("default", device="cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("served")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(1))
    (root / "sub" / "b.png").write_bytes(png_bytes(2, blur=True))
    (base / "secret.png").write_bytes(png_bytes(3))
    os.symlink(base / "secret.png", root / "escape.png")
    os.symlink(base, root / "up")
    os.symlink(root / "a.png", root / "inside.png")
    return root


@pytest.fixture(scope="module")
def client(model, root):
    cfg = ServeConfig(max_upload_mb=1, max_files=4, max_pixels=400_000, queue=4, allow_paths=root, allowed_hosts=HOSTS)
    with TestClient(create_app(model, cfg), raise_server_exceptions=False) as c:
        yield c


# ------------------------------------------------------------------------------------------ happy paths


def test_health_model_and_page(client):
    h = check(client.get("/api/health"), 200)
    assert h["status"] == "ok" and h["model"] == "default"
    card = check(client.get("/api/model"), 200)
    assert card["name"] == "default" and card["crop"] == 224 and card["limits"]["max_pixels"] == 400_000
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and r.text
    for f in (Path(shamisa.__file__).parent / "serve" / "static").iterdir():  # nothing fetched from elsewhere
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name


def test_score_uploads_match_the_cli_json(client, tmp_path):
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    files = {"sharp.png": png_bytes(4), "soft.png": png_bytes(4, blur=True)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    doc = check(client.post("/api/score", files=[("files", (n, d, "image/png")) for n, d in files.items()]), 200)
    assert set(doc) == {"model", "summary", "results"} and doc["summary"]["scored"] == 2
    rows = doc["results"]
    assert [r["path"] for r in rows] == ["sharp.png", "soft.png"]
    assert all(set(r) == set(CSV_COLUMNS) for r in rows)
    assert rows[0]["score"] > rows[1]["score"]
    out = CliRunner().invoke(app, ["score", str(tmp_path / "sharp.png"), str(tmp_path / "soft.png"), "-f", "json", "-q",
                                   "--device", "cpu"])
    assert out.exit_code == 0, out.output
    cli = json.loads(out.stdout)
    assert set(cli) == set(doc) and cli["model"] == doc["model"]
    for a, b in zip(rows, cli["results"], strict=True):
        assert set(a) == set(b)
        assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}


def test_map_formats(client):
    data = png_bytes(5)
    png = check(client.post("/api/map?format=png", files={"file": ("x.png", data, "image/png")}), 200)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    heat = check(client.post("/api/map?format=heatmap", files={"file": ("x.png", data, "image/png")}), 200)
    assert Image.open(io.BytesIO(heat.content)).size == (320, 240)
    assert 0 <= float(heat.headers["X-Map-Min"]) <= float(heat.headers["X-Map-Max"]) <= 1
    doc = check(client.post("/api/map?format=json&patch=160&stride=80", files={"file": ("x.png", data, "image/png")}), 200)
    assert doc["name"] == "x.png" and (doc["width"], doc["height"]) == (320, 240)
    assert np.asarray(doc["grid"]).shape == (2, 3) and np.asarray(doc["map"]).shape == (240, 320)


def test_score_paths_under_the_root(client):
    doc = check(client.post("/api/score-paths", json={"paths": ["a.png", "sub/b.png", "inside.png"]}), 200)
    assert [r["path"] for r in doc["results"]] == ["a.png", "sub/b.png", "inside.png"]
    assert doc["results"][0]["score"] == doc["results"][2]["score"]
    missing = check(client.post("/api/score-paths", json={"paths": ["a.png", "nope.png"]}), 422)
    assert missing["results"][0]["error"] is None and "no such file" in missing["results"][1]["error"]


# ------------------------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("truncated.png", png_bytes(6)[:3000], "truncated"),
        ("notes.png", b"this is not an image at all\n" * 20, "not a recognised image format"),
        ("empty.jpg", b"", "empty file"),
        ("bomb.png", bomb_png(), "decompression bomb"),
        ("big.png", png_bytes(7, h=700, w=700), "over the limit of 400000"),
        ("tiny.png", png_bytes(8, h=4, w=40), "smaller than the minimum side"),
    ],
    ids=["truncated", "not-an-image", "empty", "pixel-bomb", "over-max-pixels", "too-small"],
)
def test_each_bad_upload_is_a_422_with_its_reason(client, name, data, reason):
    doc = check(client.post("/api/score", files={"file": (name, data, "image/png")}), 422)
    assert doc["results"][0]["path"] == name and reason in doc["results"][0]["error"]
    assert name in doc["detail"][0] and reason in doc["detail"][0]
    mdoc = check(client.post("/api/map", files={"file": (name, data, "image/png")}), 422)
    assert reason in mdoc["detail"]
    healthy(client)


def test_good_and_bad_files_together(client):
    doc = check(client.post("/api/score", files=[("f", ("ok.png", png_bytes(9), "image/png")),
                                                 ("f", ("bad.png", b"GIF89a broken", "image/gif"))]), 422)
    assert doc["summary"] == {**doc["summary"], "images": 2, "scored": 1, "failed": 1}
    assert doc["results"][0]["score"] is not None and doc["results"][1]["error"]


def test_oversize_uploads_are_413(client):
    big = os.urandom(1_200_000)
    check(client.post("/api/score", files={"file": ("big.png", big, "image/png")}), 413)

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b"x" * 100_000

    doc = check(client.post("/api/score", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"}), 413)
    assert "max-upload-mb" in doc["detail"]
    healthy(client)
    assert client.get("/api/health").json()["in_flight"] == 0


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status"),
    [
        ("post", "/api/score", {}, 415),
        ("post", "/api/score", {"data": {"x": "1"}, "files": {"note": ("n.txt", b"", "text/plain")}}, 422),
        ("post", "/api/score", {"content": b"--zz\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=zz"}}, (400, 422)),
        ("post", "/api/score", {"files": [("f", (f"{i}.png", b"x", "image/png")) for i in range(6)]}, 400),
        ("post", "/api/map?format=gif", {"files": {"file": ("a.png", png_bytes(1), "image/png")}}, 400),
        ("post", "/api/map?patch=8", {"files": {"file": ("a.png", png_bytes(1), "image/png")}}, 400),
        ("post", "/api/map?patch=abc", {"files": {"file": ("a.png", png_bytes(1), "image/png")}}, 422),
        ("post", "/api/map?alpha=3", {"files": {"file": ("a.png", png_bytes(1), "image/png")}}, 400),
        ("get", "/api/score", {}, 405),
        ("get", "/api/nothing", {}, 404),
        ("get", "/docs", {}, 404),
        ("get", "/static/../serve/app.py", {}, 404),
        ("post", "/api/score-paths", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ("post", "/api/score-paths", {"json": {"paths": "a.png"}}, 400),
        ("post", "/api/score-paths", {"json": {"paths": ["a.png"] * 5}}, 413),
        ("post", "/api/score-paths", {"data": {"paths": "a.png"}}, 415),
    ],
)
def test_malformed_requests_are_4xx_json(client, method, url, kwargs, status):
    check(getattr(client, method)(url, **kwargs), status)
    healthy(client)


def test_empty_upload_field_is_an_error_row(client):
    doc = check(client.post("/api/score", files={"f": ("", b"", "application/octet-stream")}), (400, 422))
    assert doc["error"]


@pytest.mark.parametrize(
    "path",
    ["../secret.png", "sub/../../secret.png", "escape.png", "up/secret.png", "up/root/../secret.png", "/etc/passwd",
     "sub/..", "a.png\x00.txt", ""],
)
def test_paths_outside_the_root_are_refused(client, root, path):
    doc = check(client.post("/api/score-paths", json={"paths": ["a.png", path]}), (400, 403))
    assert "secret" not in json.dumps(doc.get("results", []))
    healthy(client)


def test_absolute_paths_inside_the_root_are_fine(client, root):
    check(client.post("/api/score-paths", json={"paths": [str(root / "a.png"), "up/root/a.png"]}), 200)
    doc = check(client.post("/api/score-paths", json={"paths": [str(root.parent / "secret.png")]}), 403)
    assert doc["error"] == "path refused"


def test_host_and_origin_checks(client):
    check(client.get("/api/health", headers={"host": "evil.example"}), 400)
    check(client.post("/api/score", files={"file": ("a.png", png_bytes(1), "image/png")},
                      headers={"origin": "http://evil.example"}), 403)
    check(client.post("/api/score", files={"file": ("a.png", png_bytes(1), "image/png")},
                      headers={"origin": "http://testserver"}), 200)


def test_score_paths_is_off_without_allow_paths(model):
    cfg = ServeConfig(allowed_hosts=HOSTS)
    with TestClient(create_app(model, cfg)) as c:
        doc = check(c.post("/api/score-paths", json={"paths": ["a.png"]}), 403)
        assert "--allow-paths" in doc["detail"]
        assert c.get("/api/model").json()["limits"]["score_paths"] is False


# ------------------------------------------------------------------------------------------ load and faults


def test_queue_full_is_503_with_retry_after(model, monkeypatch):
    cfg = ServeConfig(queue=1, allowed_hosts=HOSTS)
    gate = threading.Event()
    real = model.raw_from_crops

    def slow(crops):
        gate.wait(30)
        return real(crops)

    monkeypatch.setattr(model, "raw_from_crops", slow)
    app = create_app(model, cfg)
    with TestClient(app) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.setdefault(
            "r", c.post("/api/score", files={"file": ("a.png", png_bytes(1), "image/png")})))
        t.start()
        deadline = time.time() + 20
        while app.state.admission.in_flight < 1 and time.time() < deadline:
            time.sleep(0.02)
        busy = c.post("/api/score", files={"file": ("b.png", png_bytes(2), "image/png")})
        doc = check(busy, 503)
        assert int(busy.headers["retry-after"]) >= 1 and "--queue" in doc["detail"]
        check(c.get("/api/health"), 200)  # cheap endpoints stay open
        gate.set()
        t.join(30)
        check(first["r"], 200)
        check(c.post("/api/score", files={"file": ("b.png", png_bytes(2), "image/png")}), 200)
        assert c.get("/api/health").json()["refused_busy"] == 1


def test_concurrent_requests_are_batched_and_answered_in_order(model):
    cfg = ServeConfig(batch_size=4, queue=16, workers=2, allowed_hosts=HOSTS)
    app = create_app(model, cfg)
    payloads = [png_bytes(s, h=224, w=224, blur=s % 2 == 1) for s in range(6)]
    expected = model.score([np.asarray(Image.open(io.BytesIO(p))) for p in payloads])
    with TestClient(app) as c:
        out: dict[int, float] = {}

        def go(i: int) -> None:
            r = c.post("/api/score", files={"file": (f"{i}.png", payloads[i], "image/png")})
            out[i] = r.json()["results"][0]["score"]

        threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    np.testing.assert_allclose([out[i] for i in range(6)], expected, atol=2e-5)
    assert app.state.worker.images_done >= 6


def test_an_internal_fault_is_a_500_without_traceback_and_the_server_goes_on(model, monkeypatch):
    app = create_app(model, ServeConfig(allowed_hosts=HOSTS))
    calls = {"n": 0}
    real = model.raw_from_crops

    def faulty(crops):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a fault deep inside /opt/secret/module.py")
        return real(crops)

    monkeypatch.setattr(model, "raw_from_crops", faulty)
    with TestClient(app, raise_server_exceptions=False) as c:
        doc = check(c.post("/api/score", files={"file": ("a.png", png_bytes(1), "image/png")}), 500)
        assert doc["error"] == "internal error" and "secret" not in json.dumps(doc)
        check(c.post("/api/score", files={"file": ("a.png", png_bytes(1), "image/png")}), 200)
