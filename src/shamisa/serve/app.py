"""The ASGI application of ``shamisa serve`` (FastAPI).

Endpoints (docs/serve.md has curl examples):

* ``GET  /``                 the web page (static files of this package; nothing is fetched from elsewhere)
* ``GET  /api/health``       liveness and load: ``{"status": "ok", ...}``
* ``GET  /api/model``        the loaded model's card and the server's limits
* ``POST /api/score``        multipart upload of one or more images (any field name) -> the same document
  as ``shamisa score --format json``: ``{"model", "summary", "results": [rows]}``; 200 if every file was
  scored, 422 if any was not (its row has an ``error``; ``error`` / ``detail`` say which)
* ``POST /api/score-paths``  ``{"paths": [...]}``: files on the server under ``--allow-paths ROOT`` only
* ``POST /api/map``          one image -> its quality map: ``?format=png`` (overlay with colour bar),
  ``json`` (patch grid and subsampled map) or ``heatmap`` (the map alone as a colour PNG)

Every error is JSON ``{"error": ..., "detail": ...}`` with a 4xx status (5xx only for a server fault),
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from shamisa.errors import ConfigError, ImageLoadError, ShamisaError
from shamisa.serve.config import ServeConfig
from shamisa.serve.worker import Admission, ModelWorker

STATIC = Path(__file__).parent / "static"
HEAVY_PATHS = ("/api/score", "/api/score-paths", "/api/map")
MAP_FORMATS = ("png", "json", "heatmap")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit / 1024 / 1024:g} MB (--max-upload-mb)")


def _error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------- the guard


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[: h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Guard:
    """Pure ASGI middleware in front of the application:

    * Host header check (against DNS rebinding when bound to loopback) -> 400;
    * cross-origin POSTs (an ``Origin`` that is not this server) -> 403;
    * for the scoring and map endpoints: Content-Length over the limit -> 413 before the body is read, a
      streamed body counted and cut at the limit -> 413; the admission bound -> 503 + Retry-After;
    * security headers (CSP, nosniff, ...) on every response.
    """

    def __init__(self, app: Any, cfg: ServeConfig, admission: Admission, worker: ModelWorker) -> None:
        self.app = app
        self.cfg = cfg
        self.admission = admission
        self.worker = worker

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.cfg.allowed_hosts is not None and _host_name(host) not in self.cfg.allowed_hosts:
            await _error(400, "host not allowed", f"this server answers requests for {', '.join(self.cfg.allowed_hosts)} "
                         "(bind with --host to serve other names)")(scope, receive, send_secure)
            return
        origin = headers.get("origin")
        if scope["method"] == "POST" and origin is not None:
            from urllib.parse import urlsplit

            if urlsplit(origin).netloc.lower() != host.lower():
                await _error(403, "cross-origin request refused", f"origin {origin} is not this server")(
                    scope, receive, send_secure)
                return
        path = scope.get("path", "")
        if scope["method"] != "POST" or path not in HEAVY_PATHS:
            await self.app(scope, receive, send_secure)
            return
        limit = self.cfg.max_upload_bytes
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await _error(413, "upload too large", BodyTooLarge(limit).detail,
                         headers={"Connection": "close"})(scope, receive, send_secure)
            return
        if not self.admission.try_enter():
            wait = self.admission.retry_after(self.worker.seconds_per_image)
            await _error(503, "server busy", f"{self.admission.limit} requests are already queued (--queue); retry later",
                         headers={"Retry-After": str(wait)})(scope, receive, send_secure)
            return
        seen = 0

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, counted_receive, send_secure)
        finally:
            self.admission.leave()


# ---------------------------------------------------------------------------------------- shared parts


def _safe_name(name: str | None, index: int) -> str:
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = "".join(c for c in base if c.isprintable())[:200]
    return base or f"upload-{index}"


def _check_pixels(path: str, name: str, max_pixels: int | None) -> None:
    if max_pixels is None:
        return
    from shamisa.inference.preprocess import _peek

    _, size = _peek(path)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise ImageLoadError(name, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                   "(decompression-bomb guard, --max-pixels)")


def _renamed(e: ImageLoadError, path: str, name: str) -> ImageLoadError:
    return ImageLoadError(name, e.reason.replace(path, name))


def prepare_file(path: str, name: str, crop: int, max_side: int, max_pixels: int | None) -> Any:
    """Decode and crop one file exactly as ``shamisa score`` does (plus the optional pixel limit)."""
    from shamisa.inference.preprocess import prepare_path

    try:
        _check_pixels(path, name, max_pixels)
        return prepare_path(path, crop, max_side)
    except ImageLoadError as e:
        raise _renamed(e, path, name) from None


def load_file(path: str, name: str, max_side: int, max_pixels: int | None) -> Any:
    """Decode one file for a quality map, with the scorer's guards."""
    from shamisa.inference.preprocess import load_image_for_scoring

    try:
        _check_pixels(path, name, max_pixels)
        return load_image_for_scoring(path, max_side)
    except ImageLoadError as e:
        raise _renamed(e, path, name) from None
    except MemoryError:
        raise ImageLoadError(name, "out of memory while decoding") from None
    except Exception as e:
        raise ImageLoadError(name, f"cannot process: {type(e).__name__}") from None


class PathRefused(ShamisaError):
    pass


def resolve_under(root: Path, given: str) -> Path:
    """``given`` (relative to ``root``, or absolute) as a real path inside ``root``.

    Raises:
        PathRefused: a ``..`` component, a NUL byte, or a path that leaves ``root`` once symbolic links
            are resolved.
    """
    if not isinstance(given, str) or not given or "\x00" in given:
        raise PathRefused(f"{given!r}: not a valid path")
    if ".." in Path(given.replace("\\", "/")).parts:
        raise PathRefused(f"{given}: '..' is not allowed")
    cand = Path(given)
    if not cand.is_absolute():
        cand = root / cand
    real = Path(os.path.realpath(cand))
    if real != root and root not in real.parents:
        raise PathRefused(f"{given}: outside the allowed folder (symbolic links are followed before this check)")
    return real


# ---------------------------------------------------------------------------------------- the app


def create_app(
    model: Any = None,
    config: ServeConfig | None = None,
    *,
    model_name: str = "default",
    device: str | None = None,
) -> FastAPI:
    """Build the server around a loaded :class:`~shamisa.inference.quality_model.QualityModel` (or load ``model_name``).

    The model's encoder is warmed up here (traced on the CPU), so the first request is not slow.
    """
    import torch

    cfg = config or ServeConfig()
    if model is None:
        from shamisa.inference.quality_model import load

        model = load(model_name, device=device)
    crop, max_side = model.crop, model.max_side
    model._inference_encoder(torch.zeros(2, 3, crop, crop, device=model.device))  # warm up before any thread
    worker = ModelWorker(model, batch_size=cfg.batch_size or model.default_batch_size())
    admission = Admission(cfg.queue)
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="shamisa-serve-decode")
    tmpdir = tempfile.mkdtemp(prefix="shamisa-serve-")
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        try:
            yield
        finally:
            worker.close()
            pool.shutdown(wait=False, cancel_futures=True)
            shutil.rmtree(tmpdir, ignore_errors=True)

    app = FastAPI(title="shamisa", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.model = model
    app.state.config = cfg
    app.state.worker = worker
    app.state.admission = admission

    # ------------------------------------------------------------------ errors: JSON, never a traceback
    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(exc.status_code).phrase.lower()
        except ValueError:
            phrase = "error"
        detail = exc.detail if exc.detail != phrase.title() else None
        return _error(exc.status_code, phrase, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return _error(422, "invalid request", detail)

    @app.exception_handler(PathRefused)
    async def _path_refused(_: Request, exc: PathRefused) -> JSONResponse:
        return _error(403, "path refused", str(exc))

    @app.exception_handler(ImageLoadError)
    async def _image_error(_: Request, exc: ImageLoadError) -> JSONResponse:
        return _error(422, f"cannot read {exc.path}", exc.reason)

    @app.exception_handler(ShamisaError)
    async def _user_error(_: Request, exc: ShamisaError) -> JSONResponse:
        return _error(400, "invalid request", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error", f"unexpected {type(exc).__name__}; the server goes on")

    # ------------------------------------------------------------------ functions bound to this app
    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def store(upload: UploadFile) -> str:
        fd, path = tempfile.mkstemp(dir=tmpdir)
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, 1 << 20)
        return path

    async def decode_upload(upload: UploadFile, name: str, fn: Any, *args: Any) -> Any:
        path = await run(store, upload)
        try:
            return await run(fn, path, name, *args)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def uploads(request: Request, max_files: int) -> list[tuple[str, UploadFile]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise HTTPException(415, "send the images as multipart/form-data (curl -F file=@photo.jpg)")
        form = await request.form(max_files=max_files, max_fields=max_files + 16)
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(400, "no files in the request (send images as multipart file fields)")
        return [(_safe_name(f.filename, i), f) for i, f in enumerate(files)]

    async def score_items(items: list[tuple[str, Any]]) -> JSONResponse:
        """items: (display name, coroutine giving a Prepared) -> the score document."""
        from shamisa.inference.quality_model import ScoreRecord

        t0 = time.perf_counter()
        results = await asyncio.gather(*(c for _, c in items), return_exceptions=True)
        ok = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ShamisaError):
                raise r
        raws: Any = []
        if ok:
            raws = await asyncio.wrap_future(worker.score([r.crops for _, r in ok]))
        scores = model.to_score(raws) if ok else []
        records: list[Any] = []
        by_index = {i: (r, float(s), float(raw)) for (i, r), s, raw in zip(ok, scores, raws, strict=True)}
        for i, ((name, _), r) in enumerate(zip(items, results, strict=True)):
            if i in by_index:
                prep, s, raw = by_index[i]
                records.append(ScoreRecord(name, s, raw, prep.width, prep.height, prep.flags))
            else:
                reason = r.reason if isinstance(r, ImageLoadError) else str(r)
                records.append(ScoreRecord(name, error=reason))
        rows = [rec.to_dict() for rec in records]
        failed = [d for d in rows if d["error"]]
        summary = {"images": len(rows), "scored": len(rows) - len(failed), "failed": len(failed),
                   "seconds": round(time.perf_counter() - t0, 3)}
        doc: dict[str, Any] = {"model": model.card.summary(), "summary": summary, "results": rows}
        if failed:
            doc = {"error": f"{len(failed)} of {len(rows)} image(s) could not be scored",
                   "detail": [f"{d['path']}: {d['error']}" for d in failed], **doc}
            return JSONResponse(doc, status_code=422)
        return JSONResponse(doc)

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model.card.name,
            "device": str(model.device),
            "in_flight": admission.in_flight,
            "queue": admission.limit,
            "waiting_for_model": worker.waiting(),
            "images_done": worker.images_done,
            "refused_busy": admission.refused,
            "uptime_s": round(time.time() - started, 1),
        }

    @app.get("/api/model")
    async def model_card() -> dict[str, Any]:
        return {
            **model.card.summary(),
            "device": str(model.device),
            "precision": getattr(model, "precision", "fp32"),
            "max_side": max_side,
            "limits": {
                "max_upload_mb": cfg.max_upload_mb,
                "max_files": cfg.max_files,
                "max_pixels": cfg.max_pixels,
                "queue": cfg.queue,
                "batch_size": worker.batch_size,
                "score_paths": cfg.allow_paths is not None,
            },
        }

    @app.post("/api/score")
    async def score(request: Request) -> JSONResponse:
        files = await uploads(request, cfg.max_files)
        return await score_items([
            (name, decode_upload(f, name, prepare_file, crop, max_side, cfg.max_pixels)) for name, f in files
        ])

    @app.post("/api/score-paths")
    async def score_paths(request: Request) -> JSONResponse:
        if cfg.allow_paths is None:
            raise HTTPException(403, "scoring server-side paths is off; start the server with --allow-paths ROOT")
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, 'send JSON: {"paths": ["a.jpg", "sub/b.png"]}')
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(400, "the body is not valid JSON") from None
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise HTTPException(400, 'expected {"paths": [strings]} with at least one path')
        if len(paths) > cfg.max_files:
            raise HTTPException(413, f"{len(paths)} paths, over the limit of {cfg.max_files} per request")
        root = cfg.allow_paths
        real = [resolve_under(root, p) for p in paths]  # any refused path refuses the request (403)
        return await score_items([
            (p, run(prepare_file, str(r), p, crop, max_side, cfg.max_pixels)) for p, r in zip(paths, real, strict=True)
        ])

    @app.post("/api/map")
    async def quality_map(
        request: Request, format: str = "png", patch: int | None = None, stride: int | None = None,
        alpha: float = 0.5,
    ) -> Response:
        from shamisa.inference.maps import heatmap_rgba, render_overlay

        if format not in MAP_FORMATS:
            raise HTTPException(400, f"format must be one of {', '.join(MAP_FORMATS)}, not {format!r}")
        if not 0.0 <= alpha <= 1.0:
            raise HTTPException(400, "alpha must be in [0, 1]")
        files = await uploads(request, 1)
        name, f = files[0]
        image = await decode_upload(f, name, load_file, max_side, cfg.max_pixels)
        qm = await asyncio.wrap_future(worker.quality_map(image, patch, stride))
        qm = dataclasses.replace(qm, name=name)
        if format == "json":
            return JSONResponse(qm.to_dict())
        if format == "heatmap":
            png, lo, hi = await run(lambda: heatmap_rgba(qm, max_side=cfg.map_max_side))
            return Response(png, media_type="image/png", headers={
                "X-Map-Min": f"{lo:.4f}", "X-Map-Max": f"{hi:.4f}", "X-Map-Patch": str(qm.patch),
                "X-Map-Stride": str(qm.stride), "Cache-Control": "no-store"})
        png = await run(lambda: render_overlay(qm, alpha=alpha))
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    app.add_middleware(Guard, cfg=cfg, admission=admission, worker=worker)
    return app
