"""The typer application. Each sub-command lives in its own module of this package and exposes
``register(app)``; heavy imports (torch, ...) happen inside the commands so ``--help`` is instant.

Conventions: data on stdout (or ``-o FILE``), progress and logs on stderr; exit 0 only when every item
succeeded; expected errors (:class:`shamisa.errors.ShamisaError`) print one line, never a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from shamisa import __version__
from shamisa.cli import (
    compare_cmd,
    distort_cmd,
    evaluate_cmd,
    finetune_cmd,
    pretrain_cmd,
    score_cmd,
    serve_cmd,
)
from shamisa.cli.exit_codes import EXIT_INTERRUPTED, EXIT_UNEXPECTED, EXIT_USER_ERROR

app = typer.Typer(
    name="shamisa",
    help="Self-supervised no-reference image quality assessment (SHAMISA, LML-IQA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"shamisa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    """Self-supervised no-reference image quality assessment (SHAMISA, LML-IQA)."""


for _module in (score_cmd, evaluate_cmd, distort_cmd, pretrain_cmd, finetune_cmd, compare_cmd, serve_cmd):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning expected errors into one-line messages."""
    from shamisa.errors import ShamisaError

    try:
        app(args=argv, standalone_mode=True)
    except ShamisaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # an unexpected failure: one line, the traceback only on request
        if os.environ.get("SHAMISA_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (set SHAMISA_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_UNEXPECTED)
