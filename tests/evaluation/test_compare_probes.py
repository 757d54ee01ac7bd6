"""bench/compare_probes.py: paired per-split comparison of two evaluation results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "compare_probes.py"


@pytest.fixture(scope="module")
def cp():
    spec = importlib.util.spec_from_file_location("compare_probes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _result(srcc: list[float], plcc: list[float], **config: object) -> dict:
    cfg = {"n_splits": len(srcc), "seed": 27, "ratios": [0.7, 0.1, 0.2], **config}
    return {"format": "shamisa-eval", "dataset": "toy", "n_images": 50, "config": cfg,
            "per_split": [{"split": i, "srcc": s, "plcc": p} for i, (s, p) in enumerate(zip(srcc, plcc, strict=True))]}


def test_sign_test_hand_computed(cp) -> None:
    assert cp.sign_test_p(10, 0) == pytest.approx(2 / 2**10)
    assert cp.sign_test_p(3, 7) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)
    assert cp.sign_test_p(0, 0) == 1.0 and cp.sign_test_p(5, 5) == 1.0


def test_paired_differences(cp, tmp_path: Path) -> None:
    a = _result([0.5, 0.6, 0.7], [0.5, 0.5, 0.5])
    b = _result([0.6, 0.6, 0.65], [0.6, 0.7, 0.8])
    res = cp.compare(a, b)
    assert res["srcc"]["diffs"] == pytest.approx([0.1, 0.0, -0.05])
    assert res["srcc"]["improved"] == 1 and res["srcc"]["worse"] == 1
    assert res["srcc"]["median_a"] == pytest.approx(0.6) and res["srcc"]["median_b"] == pytest.approx(0.6)
    assert res["plcc"]["mean_diff"] == pytest.approx(0.2) and res["plcc"]["improved"] == 3
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    out = tmp_path / "cmp.json"
    assert cp.main([str(pa), str(pb), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["plcc"]["improved"] == 3


def test_different_splits_are_refused(cp, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="different splits"):
        cp.compare(_result([0.5], [0.5]), _result([0.5], [0.5], seed=1))
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not a shamisa evaluate"):
        cp.load(bad)
