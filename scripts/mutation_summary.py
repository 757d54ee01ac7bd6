"""One-line summary of a scripts/mutation.sh run, and its gaps.

Reads ``WORK/result.txt`` (``name: status`` per mutant) and ``WORK/survivors.txt`` (each survivor's changed
lines), leaves out of the kill rate the survivors listed in ``scripts/mutation-equivalent.txt`` -- matched by
mutant name *and* mutated line, so an entry stops counting as soon as its function changes -- and writes the
other survivors, with their changes, to ``WORK/gaps.txt``.

    python scripts/mutation_summary.py WORK LABEL [WHEN]
"""

from __future__ import annotations

import sys
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check"}


def _changes(survivors: Path) -> dict[str, list[str]]:
    """mutant name -> its lines, as written in survivors.txt (``-old`` / ``+new``)."""
    out: dict[str, list[str]] = {}
    name = None
    for line in survivors.read_text().splitlines() if survivors.exists() else []:
        if line.startswith("## "):
            name = line[3:].strip()
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def _equivalent(listing: Path) -> dict[str, str]:
    """mutant name -> its mutated line (stripped), from the list of equivalent mutants."""
    out = {}
    for line in listing.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, new_line, _why = line.split("\t", 2)
            out[name] = new_line.strip()
    return out


def main(work: Path, label: str, when: str = "", listing: Path | None = None) -> str:
    """Write ``work/gaps.txt`` and return the summary line (``listing``: the equivalents file, by default
    ``mutation-equivalent.txt`` beside this script)."""
    statuses = [ln.rsplit(": ", 1) for ln in (work / "result.txt").read_text().splitlines() if ": " in ln]
    total = len(statuses)
    killed = sum(s in KILLED for _, s in statuses)
    survivors = [n for n, s in statuses if s == "survived"]
    other = total - killed - len(survivors)
    changes = _changes(work / "survivors.txt")
    listed = _equivalent(listing or Path(__file__).with_name("mutation-equivalent.txt"))

    def is_equivalent(name: str) -> bool:
        added = [ln[1:].strip() for ln in changes.get(name, []) if ln.startswith("+")]
        return name in listed and listed[name] in added

    gaps = [n for n in survivors if not is_equivalent(n)]
    (work / "gaps.txt").write_text("".join(f"## {n}\n" + "".join(f"{c}\n" for c in changes.get(n, [])) for n in gaps))
    equivalent = len(survivors) - len(gaps)
    scored = total - other - equivalent
    rate = f"{100 * killed / scored:.1f}%" if scored else "-"
    return (
        f"{label}: {killed} of {total} killed, {len(survivors)} survived ({equivalent} equivalent, {len(gaps)} gaps), "
        f"{other} other (no tests / not checked); kill rate {rate} ({killed} / {scored})" + (f", {when}" if when else "")
    )


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2], *sys.argv[3:4]))
