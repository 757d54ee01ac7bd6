"""What every command shares: stderr messages, the one-line error exits and the exit codes."""

from __future__ import annotations

import os
import sys

import typer

from shamisa.cli.exit_codes import EXIT_UNEXPECTED, EXIT_USER_ERROR

MAX_LISTED_FAILURES = 20
DEVICE_HELP = "cpu, cuda, cuda:N or auto."


def err(msg: str) -> None:
    """One line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def user_error(msg: str) -> typer.Exit:
    """Print ``error: msg`` and return the exit for a usage / configuration / data error."""
    err(f"error: {msg}")
    return typer.Exit(EXIT_USER_ERROR)


def internal_error(e: Exception) -> BaseException:
    """Unexpected exceptions: one line (set SHAMISA_DEBUG=1 for the traceback)."""
    if os.environ.get("SHAMISA_DEBUG"):
        return e
    err(f"error: unexpected {type(e).__name__}: {e} (set SHAMISA_DEBUG=1 for a traceback and please report it)")
    return typer.Exit(EXIT_UNEXPECTED)
