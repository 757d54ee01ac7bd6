"""``shamisa serve`` under load, against ``shamisa score`` on the same images in the same run.

1. ``shamisa score`` (the CLI, a subprocess) scores the image set ``--rounds`` times; its own summary line
   gives images/s without the start-up (model load), which is also reported.
2. ``shamisa serve`` is started as a subprocess on a free loopback port. After a warm-up, 1, 4 and 16
   concurrent clients (httpx, one image per request) send ``--requests`` uploads each round: images/s,
   p50 / p95 latency, and the 503s (none expected with the default --queue 32).
3. Memory: the server's resident set size (from /proc) is sampled every 100 requests over ``--soak``
   (2,000) uploads sent by 4 clients.
4. The hostile set: decompression bombs, truncated files, wrong types, a 200 MB upload (declared and
   streamed), path traversal and symbolic-link escapes on /api/score-paths, malformed requests; each must
   be answered 4xx, and the server must still answer /api/health and score a good image afterwards.

Usage::

    python bench/serve_load.py --images ../shared/data/pristine/kodak24

Writes ``bench/results/serve_load.json`` (relative paths only) and prints a summary. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return p.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ------------------------------------------------------------------------------------------ the CLI


def _cli_once(files: list[Path]) -> tuple[int, float, float, list[dict]]:
    args = [sys.executable, "-m", "shamisa", "score", *map(str, files), "-f", "jsonl", "--device", "cpu"]
    t0 = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, env=_env(), check=False)
    wall = time.perf_counter() - t0
    m = re.search(r"scored (\d+) of (\d+) image\(s\) in ([\d.]+) s \(([\d.]+) images/s\)", p.stderr)
    if p.returncode != 0 or not m:
        raise SystemExit(f"shamisa score failed ({p.returncode}): {p.stderr[-2000:]}")
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return int(m.group(1)), float(m.group(3)), wall, rows


def run_cli(files: list[Path], rounds: int) -> dict:
    """The CLI's own summary rate over ``rounds`` x the set (it includes the encoder's one-time trace on
    the first batch), and its steady-state rate: the extra images over the extra seconds of that run
    against a run of the set once."""
    n1, s1, _, _ = _cli_once(files)
    n, seconds, wall, rows = _cli_once(files * rounds)
    steady = (n - n1) / (seconds - s1) if seconds > s1 and n > n1 else n / seconds
    return {
        "command": f"shamisa score IMAGES -f jsonl --device cpu (the set once, then {rounds} times)",
        "images": n,
        "scoring_seconds": seconds,
        "images_per_s": round(n / seconds, 3),
        "images_per_s_steady": round(steady, 3),
        "wall_seconds_with_startup": round(wall, 2),
        "images_per_s_with_startup": round(n / wall, 3),
        "scores": {Path(r["path"]).name: r["score"] for r in rows[: len(files)]},
    }


# ------------------------------------------------------------------------------------------ the server


class Server:
    def __init__(self, root: Path, extra: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "shamisa", "serve", "--port", str(self.port), "--device", "cpu",
                "--allow-paths", str(root), "--log-level", "warning", *extra]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, env=_env(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        self.log.seek(0)
        raise SystemExit(f"the server did not start: {self.log.read().decode(errors='replace')[-2000:]}")

    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _load(url: str, payloads: list[tuple[str, bytes]], clients: int, requests: int,
                on_done=None) -> dict:
    lat: list[float] = []
    codes: dict[int, int] = {}
    scores: dict[str, float] = {}
    counter = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            name, data = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            r = await c.post(url + "/api/score", files={"file": (name, data, "image/png")})
            lat.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                scores[name] = r.json()["results"][0]["score"]
            if on_done is not None:
                on_done(len(lat))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    a = np.asarray(lat)
    return {
        "clients": clients,
        "requests": requests,
        "seconds": round(wall, 2),
        "images_per_s": round(codes.get(200, 0) / wall, 3),
        "latency_p50_s": round(float(np.percentile(a, 50)), 3),
        "latency_p95_s": round(float(np.percentile(a, 95)), 3),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "_scores": scores,
    }


# ------------------------------------------------------------------------------------------ hostile set


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def _real_bomb() -> bytes:
    """A genuine 9000 x 9000 PNG (81 MP, over the 64 MP guard) that compresses to a few hundred KB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _streamed_upload(mb: int):
    """A multipart body with one file part of ``mb`` MB, sent in chunks without a Content-Length."""
    yield (b'--b\r\nContent-Disposition: form-data; name="f"; filename="big.png"\r\n'
           b"Content-Type: image/png\r\n\r\n")
    for _ in range(mb):
        yield b"\0" * (1 << 20)
    yield b"\r\n--b--\r\n"


def hostile(url: str, good: bytes, root: Path) -> list[dict]:
    jpeg = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(good)).convert("RGB").save(jpeg, format="JPEG", quality=90)
    jpeg_bytes = jpeg.getvalue()
    cases: list[tuple[str, str, dict]] = [
        ("bomb: PNG header announcing 30000x30000", "/api/score", {"files": {"f": ("bomb.png", _png_header(30000, 30000))}}),
        ("bomb: real 9000x9000 PNG (81 MP)", "/api/score", {"files": {"f": ("bomb9k.png", _real_bomb())}}),
        ("bomb: map of the 30000x30000 header", "/api/map", {"files": {"f": ("bomb.png", _png_header(30000, 30000))}}),
        ("truncated PNG", "/api/score", {"files": {"f": ("t.png", good[: len(good) // 3])}}),
        ("truncated JPEG", "/api/score", {"files": {"f": ("t.jpg", jpeg_bytes[: len(jpeg_bytes) // 2])}}),
        ("empty file", "/api/score", {"files": {"f": ("e.png", b"")}}),
        ("text as .png", "/api/score", {"files": {"f": ("x.png", b"hello " * 1000)}}),
        ("PDF", "/api/score", {"files": {"f": ("x.pdf", b"%PDF-1.4\n" + os.urandom(5000))}}),
        ("zip", "/api/score", {"files": {"f": ("x.zip", b"PK\x03\x04" + os.urandom(5000))}}),
        ("HTML with script", "/api/score", {"files": {"f": ("x.html", b"<html><script>alert(1)</script></html>")}}),
        ("random bytes", "/api/score", {"files": {"f": ("r.jpg", os.urandom(100_000))}}),
        ("tiny 4x4 image", "/api/score", {"files": {"f": ("s.png", _png_header(4, 4))}}),
        ("no multipart", "/api/score", {"content": b"raw", "headers": {"content-type": "image/png"}}),
        ("broken multipart", "/api/score", {"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=b"}}),
        ("200 MB upload, declared", "/api/score", {"files": {"f": ("big.png", b"\0" * (200 * 1024 * 1024))}}),
        ("200 MB upload, streamed without length", "/api/score",
         {"content": _streamed_upload(200), "headers": {"content-type": "multipart/form-data; boundary=b"}}),
        ("traversal ../", "/api/score-paths", {"json": {"paths": ["../secret.png"]}}),
        ("traversal sub/../../", "/api/score-paths", {"json": {"paths": ["sub/../../secret.png"]}}),
        ("absolute path outside", "/api/score-paths", {"json": {"paths": ["/etc/passwd"]}}),
        ("symlink escaping the root", "/api/score-paths", {"json": {"paths": ["escape.png"]}}),
        ("symlinked folder out of the root", "/api/score-paths", {"json": {"paths": ["up/secret.png"]}}),
        ("NUL byte in a path", "/api/score-paths", {"json": {"paths": ["a.png\x00.txt"]}}),
        ("paths not JSON", "/api/score-paths", {"content": b"{nope", "headers": {"content-type": "application/json"}}),
        ("map: bad format", "/api/map?format=exe", {"files": {"f": ("a.png", good)}}),
        ("map: patch 1", "/api/map?patch=1", {"files": {"f": ("a.png", good)}}),
        ("cross-origin POST", "/api/score", {"files": {"f": ("a.png", good)}, "headers": {"origin": "http://evil.example"}}),
        ("foreign Host header", "/api/health", {"headers": {"host": "evil.example"}}),
    ]
    out = []
    with httpx.Client(timeout=300) as c:
        for label, path, kw in cases:
            method = "GET" if path == "/api/health" else "POST"
            t0 = time.perf_counter()
            try:
                r = c.request(method, url + path, **kw)
                status, body = r.status_code, r.text
            except httpx.HTTPError as e:  # the server may close a connection it refused to read
                status, body = None, f"{type(e).__name__}"
            try:
                doc = json.loads(body)
                error = doc.get("error")
                detail = doc.get("detail")
            except (ValueError, AttributeError):
                error, detail = None, body[:200]
            out.append({
                "case": label, "status": status, "error": error,
                "detail": detail if isinstance(detail, str) else json.dumps(detail)[:300],
                "is_4xx": status is not None and 400 <= status < 500,
                "traceback_in_body": "Traceback" in body or 'File "' in body,
                "seconds": round(time.perf_counter() - t0, 2),
            })
            print(f"  {label}: {status} {error}", flush=True)
        # a harmless case: a multipart file name with ../ is reduced to its base name
        r = c.post(url + "/api/score", files={"f": ("../../etc/passwd.png", good)})
        out.append({"case": "file name with ../ (reduced to its base name; scored)", "status": r.status_code,
                    "error": None, "detail": r.json()["results"][0]["path"], "is_4xx": False,
                    "traceback_in_body": "Traceback" in r.text, "expected": "200"})
    return out


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=REPO / "examples" / "images")
    ap.add_argument("--rounds", type=int, default=3, help="the CLI scores the set this many times")
    ap.add_argument("--requests", type=int, default=72, help="uploads per concurrency level")
    ap.add_argument("--soak", type=int, default=2000, help="uploads of the memory soak")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = ap.parse_args()
    from PIL import Image

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in exts)
    if not files:
        raise SystemExit(f"no images in {args.images}")
    payloads = [(p.name, p.read_bytes()) for p in files]
    sizes = sorted({Image.open(p).size for p in files})
    load_before = os.getloadavg()
    doc: dict = {
        "command": f"python bench/serve_load.py --images {_rel(args.images)}",
        "images": {"folder": _rel(args.images), "count": len(files), "sizes": [list(s) for s in sizes[:5]]},
        "machine": {"cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before]},
    }
    print(f"load average {load_before}; CLI on {len(files)} images x {args.rounds} ...", flush=True)
    doc["cli"] = cli = run_cli(files, args.rounds)
    print(f"  CLI {cli['images_per_s']} images/s (steady {cli['images_per_s_steady']})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "root"
        (root / "sub").mkdir(parents=True)
        (root / "a.png").write_bytes(payloads[0][1])
        (base / "secret.png").write_bytes(payloads[0][1])
        os.symlink(base / "secret.png", root / "escape.png")
        os.symlink(base, root / "up")
        server = Server(root, [])
        try:
            doc["server"] = {"command": "shamisa serve --port PORT --device cpu --allow-paths ROOT",
                             "rss_mb_after_start": round(server.rss_mb(), 1)}
            asyncio.run(_load(server.url, payloads, 2, 2 * len(payloads)))  # warm-up
            doc["server"]["rss_mb_after_warmup"] = round(server.rss_mb(), 1)
            levels = []
            for clients in (1, 4, 16):
                res = asyncio.run(_load(server.url, payloads, clients, args.requests))
                scores = res.pop("_scores")
                res["max_score_difference_vs_cli"] = round(max(abs(scores[k] - cli["scores"][k]) for k in scores), 8)
                res["vs_cli_images_per_s"] = round(res["images_per_s"] / cli["images_per_s"], 3)
                res["vs_cli_steady_images_per_s"] = round(res["images_per_s"] / cli["images_per_s_steady"], 3)
                levels.append(res)
                print(f"  {clients:2d} clients: {res['images_per_s']} images/s ({res['vs_cli_images_per_s']:.0%} of the "
                      f"CLI, {res['vs_cli_steady_images_per_s']:.0%} of its steady rate), p50 {res['latency_p50_s']} s, p95 {res['latency_p95_s']} s, {res['status_codes']}", flush=True)
            doc["api"] = levels
            worst = min(levels[1]["vs_cli_images_per_s"], levels[1]["vs_cli_steady_images_per_s"])
            doc["goal_api_at_4_clients_vs_cli"] = {
                "goal": 0.8, "vs_cli_summary_rate": levels[1]["vs_cli_images_per_s"],
                "vs_cli_steady_rate": levels[1]["vs_cli_steady_images_per_s"], "met": worst >= 0.8}

            samples: list[tuple[int, float]] = [(0, round(server.rss_mb(), 1))]

            def sample(n: int) -> None:
                if n % 100 == 0:
                    samples.append((n, round(server.rss_mb(), 1)))
                    if n % 500 == 0:
                        print(f"  soak {n}: RSS {samples[-1][1]} MB", flush=True)

            soak = asyncio.run(_load(server.url, payloads, 4, args.soak, on_done=sample))
            soak.pop("_scores")
            rss = np.asarray([s[1] for s in samples])
            first_half = rss[1 : len(rss) // 2 + 1]
            doc["soak"] = {
                **soak,
                "rss_mb_samples": samples,
                "rss_mb_min": float(rss.min()), "rss_mb_max": float(rss.max()),
                "rss_mb_growth_second_half": round(float(rss[-1] - first_half.max()), 1),
            }
            print(f"  soak: {soak['status_codes']}, RSS {rss.min()}-{rss.max()} MB", flush=True)

            print("hostile set:", flush=True)
            good = payloads[0][1]
            doc["hostile"] = cases = hostile(server.url, good, root)
            expected_4xx = [c for c in cases if c.get("expected") != "200"]
            h = httpx.get(server.url + "/api/health", timeout=30)
            after = httpx.post(server.url + "/api/score", files={"f": ("a.png", good)}, timeout=120)
            doc["hostile_summary"] = {
                "cases": len(expected_4xx),
                "answered_4xx": sum(c["is_4xx"] for c in expected_4xx),
                "tracebacks": sum(c["traceback_in_body"] for c in cases),
                "health_after": h.json().get("status"),
                "good_upload_after": after.status_code,
                "rss_mb_after": round(server.rss_mb(), 1),
                "server_alive": server.proc.poll() is None,
            }
            print(f"  {doc['hostile_summary']}", flush=True)
        finally:
            server.stop()
    doc["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    doc["cli"].pop("scores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {_rel(args.out)}")


if __name__ == "__main__":
    main()
