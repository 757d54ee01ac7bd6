"""scripts/mutation_summary.py: the kill rate leaves out only the listed equivalent mutants whose mutated
line still matches, and every other survivor goes to gaps.txt with its change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation_summary.py"


def _module():
    spec = importlib.util.spec_from_file_location("mutation_summary", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kill_rate_leaves_out_matching_equivalents_only(tmp_path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    names = [f"pkg.mod.x_f__mutmut_{i}" for i in range(1, 11)]
    statuses = ["killed"] * 5 + ["timeout", "no tests", "survived", "survived", "survived"]
    (work / "result.txt").write_text("".join(f"{n}: {s}\n" for n, s in zip(names, statuses, strict=True)))
    (work / "survivors.txt").write_text(
        "## pkg.mod.x_f__mutmut_8\n-    a = f(x, dim=1)\n+    a = f(x, )\n"
        "## pkg.mod.x_f__mutmut_9\n-    b = g(y)\n+    b = g(None)\n"
        "## pkg.mod.x_f__mutmut_10\n-    c = h(z)\n+    c = h(z, 2)\n"
    )
    listing = tmp_path / "equivalent.txt"
    listing.write_text(
        "# comment\n"
        "pkg.mod.x_f__mutmut_8\ta = f(x, )\tthe default dim\n"
        "pkg.mod.x_f__mutmut_10\tc = h(z, 3)\tlisted for another line: the function has changed\n"
    )
    line = _module().main(work, "mod (after)", "12 s", listing=listing)
    # 10 mutants: 6 killed (timeout counts), 1 without tests, 3 survivors of which 1 equivalent
    assert line == (
        "mod (after): 6 of 10 killed, 3 survived (1 equivalent, 2 gaps), 1 other (no tests / not checked); "
        "kill rate 75.0% (6 / 8), 12 s"
    )
    gaps = (work / "gaps.txt").read_text()
    assert gaps == (
        "## pkg.mod.x_f__mutmut_9\n-    b = g(y)\n+    b = g(None)\n"
        "## pkg.mod.x_f__mutmut_10\n-    c = h(z)\n+    c = h(z, 2)\n"
    )


def test_the_project_list_is_well_formed() -> None:
    listing = SCRIPT.with_name("mutation-equivalent.txt")
    entries = [ln for ln in listing.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert entries
    names = [e.split("\t")[0] for e in entries]
    assert len(names) == len(set(names))
    for e in entries:
        name, new_line, why = e.split("\t")
        assert name.startswith("shamisa.") and "__mutmut_" in name and new_line.strip() and len(why) > 10, e
