"""Every ``shamisa ...`` command shown in docs/serve.md and in the README's sections on quality maps and
``shamisa serve`` parses with the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "docs" / "serve.md", REPO / "README.md"]


def _commands(path: Path) -> list[tuple[str, bool]]:
    """(command, complete): commands of code blocks are complete; those quoted in the text may be a
    reference to an option without the paths (a missing argument is fine there, an unknown option not)."""
    text = path.read_text()
    if path.name == "README.md":
        start = text.index("### Quality maps")
        text = text[start : text.index("\n### ", text.index("### Serve", start))]
    cmds = []
    lang = None  # the language of the open code block, None outside blocks
    for line in text.splitlines():
        if line.startswith("```"):
            lang = None if lang is not None else (line[3:].strip() or "text")
            continue
        if lang in ("bash", "sh", "text", "console"):
            for part in line.split("|"):
                part = part.strip()
                if part.startswith("shamisa "):
                    cmds.append((part, True))
    if path.name == "serve.md":  # commands quoted in its text, beyond the blocks (not bare names)
        cmds += [(m, False) for m in re.findall(r"`(shamisa [^`]+)`", text) if len(m.split()) > 2 and "..." not in m]
    return cmds


CASES = [(p.name, c, full) for p in DOCS for c, full in _commands(p)]


def test_the_documents_show_serve_and_map_commands():
    shown = " ".join(c for _, c, _ in CASES)
    assert "shamisa serve" in shown and "--map" in shown


@pytest.mark.parametrize(("doc", "command", "complete"), CASES, ids=[f"{d}:{c[:60]}" for d, c, _ in CASES])
def test_command_parses(doc, command, complete):
    from typer.main import get_command

    from shamisa.cli.app import app

    args = shlex.split(command, comments=True)[1:]
    group = get_command(app)
    sub = group.commands.get(args[0])
    assert sub is not None, f"{doc}: unknown command in {command!r}"
    try:
        sub.make_context(args[0], list(args[1:]))  # raises a usage error if it does not parse
    except Exception as e:
        if complete or "MissingParameter" not in {c.__name__ for c in type(e).__mro__}:
            raise
