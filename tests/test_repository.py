"""Checks on the repository's text rather than its code.

* No tracked text file names an absolute path of a development machine: commands and result files use
  paths relative to the checkout (``data/pristine``, ``runs/...``) or placeholders
  (``$CLIVE_ROOT``), so that they mean the same thing in a user's checkout.
* Every ``shamisa ...`` command line shown in a fenced code block of README.md, BENCHMARKS.md and
  docs/*.md names a real command and real options: it is parsed by the typer app with ``--help``
  appended (which stops before any work is done).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Absolute paths that only exist on a development machine. The character classes keep this file
# from matching its own patterns.
MACHINE_PATH = re.compile(
    r"(?<![\w.~$-])("
    r"/wor[k]/"  # the development workspace
    r"|/roo[t]/"  # root's home
    r"|/hom[e]/[A-Za-z0-9_.-]+/"  # a user's home
    r"|/Users/[A-Za-z0-9_.-]+/"  # a macOS home
    r"|/tmp/pytes[t]-"  # pytest's temporary folders
    r")"
)

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache", "build", "dist"}


def _tracked_files() -> list[Path]:
    """Files git tracks (present in the working tree), or every file under the root when git is not
    available (a source archive), skipping virtual environments and caches."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False
        )
        if out.returncode == 0:
            names = [n for n in out.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
            return [ROOT / n for n in names if (ROOT / n).is_file()]
    files = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if path.is_file():
            files.append(path)
    return files


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def machine_path_hits(files: list[Path]) -> list[str]:
    hits = []
    for path in files:
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = MACHINE_PATH.search(line)
            if match:
                rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                hits.append(f"{rel}:{number}: {match.group(1)} in {line.strip()[:120]}")
    return hits


def test_no_machine_paths_in_tracked_text_files():
    hits = machine_path_hits(_tracked_files())
    assert not hits, f"{len(hits)} absolute machine path(s); use relative paths or placeholders:\n" + "\n".join(hits[:50])


def test_machine_path_check_finds_a_planted_path(tmp_path):
    planted = tmp_path / "notes.md"
    planted.write_text("data in " + "/wor" + "k/shared/data/pristine\n", encoding="utf-8")
    clean = tmp_path / "clean.md"
    clean.write_text("data in data/pristine and $CLIVE_ROOT/Images, https://example.org/wo" "rk/x\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\0\1/" + b"root/x")
    assert len(machine_path_hits([planted, clean, binary])) == 1


# --- commands in the documentation -------------------------------------------------------------

DOCS = ["README.md", "BENCHMARKS.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
SEPARATORS = {"|", "||", "&&", ";"}


def _code_block_lines(text: str):
    """(line number, logical line) for each line inside ``` fences, with ``\\`` continuations joined."""
    in_block = False
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            pending = ""
            continue
        if not in_block:
            continue
        stripped = line.strip()
        if stripped.startswith("$ "):
            stripped = stripped[2:]
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def doc_commands() -> list[tuple[str, list[str], str]]:
    """(where, arguments after ``shamisa``, the line) for every shamisa command in the docs."""
    found = []
    for name in DOCS:
        path = ROOT / name
        if not path.exists():
            continue
        for number, line in _code_block_lines(path.read_text(encoding="utf-8")):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            segment: list[str] = []
            for token in [*tokens, ";"]:
                if token not in SEPARATORS:
                    segment.append(token)
                    continue
                if segment and Path(segment[0]).name == "shamisa":
                    found.append((f"{name}:{number}", segment[1:], line))
                segment = []
    return found


COMMANDS = doc_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("where,args,line", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_doc_command_parses(where, args, line):
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    result = CliRunner().invoke(app, [*args, "--help"])
    output = result.output
    problems = [msg for msg in ("No such option", "No such command") if msg in output]
    if (result.exit_code != 0 or problems) and "..." in args:
        pytest.skip(f"placeholder '...' in {line!r}")
    assert result.exit_code == 0 and not problems, f"{where}: `shamisa {' '.join(args)}` does not parse:\n{output}"
