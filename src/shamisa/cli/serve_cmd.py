"""``shamisa serve``: the web page and JSON API over one model (FastAPI app run by uvicorn).

Safe by default: binds 127.0.0.1, answers only Host names of that address, limits the upload size, the
pixels per image and the requests waiting for the model, and scores files on the server only under the
folder given with ``--allow-paths``. See docs/serve.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

EXIT_USER_ERROR = 2


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface; think first)."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port (0: any free port)."),
    model: str = typer.Option("default", "--model", "-m", help="A bundled model name or a model file."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    precision: str = typer.Option("fp32", "--precision", help="Encoder arithmetic: fp32 or bf16 (see shamisa score)."),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Largest request body (all files together), in MB."),
    max_files: int = typer.Option(64, "--max-files", min=1, help="Most files (or paths) in one request."),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", min=64, show_default=False,
        help="Refuse images with more pixels, before decoding (default: the scorer's guard, 64 MP; JPEGs 179 MP).",
    ),
    queue: int = typer.Option(32, "--queue", min=1, help="Most scoring/map requests inside the server at once; more get 503 + Retry-After."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, show_default=False,
        help="Most images per encoder pass; waiting requests are batched up to it (default: 1 on the CPU, 16 on CUDA).",
    ),
    workers: int = typer.Option(2, "--workers", "-j", min=1, help="Decoding threads beside the model thread."),
    allow_paths: Path | None = typer.Option(
        None, "--allow-paths", show_default=False,
        help="Enable POST /api/score-paths for files under this folder ('..' and symbolic links out of it refused).",
    ),
    max_side: int = typer.Option(2048, "--max-side", min=64, help="Downscale images whose longer side is larger."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: critical, error, warning, info, debug."),
) -> None:
    """Serve a web page and a JSON API that score images and draw their quality maps.

    Open http://127.0.0.1:8000/ (the default address) in a browser, or call the API, e.g.
    curl -F file=@photo.jpg http://127.0.0.1:8000/api/score
    """
    from shamisa.errors import ShamisaError

    try:
        import uvicorn

        from shamisa.serve.app import create_app
        from shamisa.serve.config import LOOPBACK_HOSTS, ServeConfig
    except ImportError as e:
        print(f"error: shamisa serve needs the 'serve' extra ({e.name} is missing): pip install 'shamisa[serve]'",
              file=sys.stderr)
        raise typer.Exit(EXIT_USER_ERROR) from None
    try:
        from shamisa.inference.quality_model import load

        cfg = ServeConfig(
            max_upload_mb=max_upload_mb, max_files=max_files, max_pixels=max_pixels, queue=queue,
            batch_size=batch_size, workers=workers, allow_paths=allow_paths,
            allowed_hosts=LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None,
        )
        qm = load(model, device=device, max_side=max_side, precision=precision)
        app = create_app(qm, cfg)
    except ShamisaError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_USER_ERROR) from None
    shown = f"[{host}]" if ":" in host else host
    print(f"shamisa serve: model {qm.card.name!r} on {qm.device}; open http://{shown}:{port}/ "
          f"(Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, access_log=log_level == "debug")


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(serve_command)
