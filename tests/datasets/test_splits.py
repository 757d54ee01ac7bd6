"""Split generation, saving, validation and ARNIQA split files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shamisa.datasets import (
    IQADataset,
    Splits,
    get_or_create_splits,
    load_arniqa_splits,
    load_dataset,
    load_splits,
    make_splits,
    save_splits,
)
from shamisa.errors import ConfigError, DatasetError

FIX = Path(__file__).parents[1] / "fixtures"


def synthetic_ds(n_refs: int, per_ref: int, shuffle_seed: int = 0) -> IQADataset:
    """A dataset of n_refs * per_ref images whose reference ids appear in a shuffled order."""
    refs = [f"ref{r:03d}" for r in range(n_refs) for _ in range(per_ref)]
    order = np.random.default_rng(shuffle_seed).permutation(len(refs))
    refs = [refs[i] for i in order]
    n = len(refs)
    return IQADataset(
        name="synth",
        root=Path("/data"),
        paths=tuple(Path(f"/data/img{i:05d}.png") for i in range(n)),
        scores=np.linspace(0, 1, n),
        mos_type="mos",
        score_range=(0, 1),
        synthetic=True,
        refs=tuple(refs),
    )


def authentic_ds(n: int, name: str = "auth") -> IQADataset:
    return IQADataset(
        name=name,
        root=Path("/data"),
        paths=tuple(Path(f"/data/a{i:05d}.jpg") for i in range(n)),
        scores=np.arange(n, dtype=float),
        mos_type="mos",
        score_range=(0, max(n, 1)),
        synthetic=False,
    )


def _assert_partition(splits: Splits, n: int) -> None:
    for s in range(len(splits)):
        tr, va, te = splits.split(s)
        joined = np.concatenate([tr, va, te])
        assert joined.size == n and np.array_equal(np.sort(joined), np.arange(n))  # disjoint, covers all
        for a in (tr, va, te):
            assert a.dtype == np.int64 and np.all(np.diff(a) > 0)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(n_refs=st.integers(1, 40), per_ref=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_reference_disjoint_properties(n_refs: int, per_ref: int, seed: int) -> None:
    ds = synthetic_ds(n_refs, per_ref, shuffle_seed=seed)
    splits = make_splits(ds, n_splits=3, seed=seed)
    assert splits.kind == "reference-disjoint" and len(splits) == 3 and splits.seed == seed
    _assert_partition(splits, len(ds))
    refs = np.asarray(ds.refs)
    for s in range(3):
        tr, va, te = (set(refs[a]) for a in splits.split(s))
        assert not (tr & va) and not (tr & te) and not (va & te)
        # proportions of references: first round(0.7 n) train, next round(0.1 n) val
        assert len(tr) == min(n_refs, round(0.7 * n_refs))
        assert len(va) == min(n_refs - len(tr), round(0.1 * n_refs))
        assert len(tr) + len(va) + len(te) == n_refs


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), seed=st.integers(0, 10_000))
def test_random_split_properties(n: int, seed: int) -> None:
    splits = make_splits(authentic_ds(n), n_splits=2, seed=seed)
    assert splits.kind == "random"
    _assert_partition(splits, n)
    tr, va, _ = splits.split(0)
    assert tr.size == round(0.7 * n) and va.size == min(n - tr.size, round(0.1 * n))


def test_reference_disjoint_matches_the_documented_rule() -> None:
    """Hand-built expectation: permute sorted refs with default_rng(seed + s), cut 7/1/2 of 10 refs."""
    ds = synthetic_ds(10, 3, shuffle_seed=5)
    splits = make_splits(ds, n_splits=2, seed=27)
    refs = np.asarray(ds.refs)
    unique = sorted(set(ds.refs))  # type: ignore[arg-type]
    for s in range(2):
        perm = np.random.default_rng(27 + s).permutation(10)
        expected_train = {unique[i] for i in perm[:7]}
        expected_val = {unique[i] for i in perm[7:8]}
        tr, va, te = splits.split(s)
        assert set(refs[tr]) == expected_train and set(refs[va]) == expected_val
        assert tr.size == 21 and va.size == 3 and te.size == 6


def test_random_split_matches_the_documented_rule() -> None:
    splits = make_splits(authentic_ds(20), n_splits=1, seed=3)
    perm = np.random.default_rng(3).permutation(20)
    assert np.array_equal(splits.train[0], np.sort(perm[:14]))
    assert np.array_equal(splits.val[0], np.sort(perm[14:16]))
    assert np.array_equal(splits.test[0], np.sort(perm[16:]))


def test_determinism_and_seed_sensitivity() -> None:
    ds = synthetic_ds(30, 4)
    a, b = make_splits(ds, seed=27), make_splits(ds, seed=27)
    c = make_splits(ds, seed=28)
    for s in range(10):
        assert all(np.array_equal(x, y) for x, y in zip(a.split(s), b.split(s), strict=True))
    assert any(not np.array_equal(a.test[s], c.test[s]) for s in range(10))
    # split s of seed 27 uses rng(28), which is split s-1 of seed 28
    assert np.array_equal(a.test[1], c.test[0])
    # the 10 splits differ from one another
    assert len({tuple(t) for t in a.test}) == 10


def test_ratios_are_respected_and_validated() -> None:
    ds = authentic_ds(100)
    sp = make_splits(ds, n_splits=1, ratios=(0.5, 0.25, 0.25))
    assert [a.size for a in sp.split(0)] == [50, 25, 25]
    sp = make_splits(ds, n_splits=1, ratios=(0.8, 0.0, 0.2))
    assert sp.val[0].size == 0 and sp.train[0].size == 80
    for bad in [(0.7, 0.1, 0.1), (1.2, -0.1, -0.1), (0.5, 0.5)]:
        with pytest.raises(ConfigError):
            make_splits(ds, ratios=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        make_splits(ds, n_splits=0)


def test_official_split_for_flive() -> None:
    ds = load_dataset("flive", FIX / "datasets" / "flive")
    sp = make_splits(ds, n_splits=10)
    assert sp.kind == "official" and len(sp) == 1
    labels = np.asarray(ds.official_split)
    for part, arr in zip(("train", "val", "test"), sp.split(0), strict=True):
        assert np.array_equal(arr, np.flatnonzero(labels == part))
    _assert_partition(sp, len(ds))


def test_fixture_datasets_split_by_reference() -> None:
    for name in ("live", "csiq", "tid2013", "kadid10k"):
        ds = load_dataset(name, FIX / "datasets" / name)
        sp = make_splits(ds)
        assert sp.kind == "reference-disjoint"
        refs = np.asarray(ds.refs)
        for s in range(len(sp)):
            assert not set(refs[sp.train[s]]) & set(refs[sp.test[s]])


def test_clive_mini_random_splits() -> None:
    ds = load_dataset("clive", FIX / "clive_mini")
    sp = make_splits(ds)
    assert sp.kind == "random" and len(sp) == 10
    _assert_partition(sp, 8)
    assert [a.size for a in sp.split(0)] == [6, 1, 1]


# ----------------------------------------------------------------------------- save / load


def test_save_load_roundtrip(tmp_path: Path) -> None:
    ds = synthetic_ds(12, 3)
    sp = make_splits(ds, n_splits=4, seed=5)
    path = save_splits(sp, tmp_path / "sub" / "splits.json")
    obj = json.loads(path.read_text())
    assert obj["format"] == "shamisa-splits" and obj["kind"] == "reference-disjoint"
    assert obj["images"][0] == "img00000.png" and len(obj["splits"]) == 4
    for loaded in (load_splits(path), load_splits(path, ds)):
        assert (loaded.dataset, loaded.seed, loaded.kind, len(loaded)) == (
            "synth",
            5,
            "reference-disjoint",
            4,
        )
        assert loaded.ratios == (0.7, 0.1, 0.2)
        for s in range(4):
            assert all(np.array_equal(x, y) for x, y in zip(sp.split(s), loaded.split(s), strict=True))
    assert not list(tmp_path.glob("sub/.*.tmp"))  # atomic write leaves no temporary file


def test_stale_split_file_detected(tmp_path: Path) -> None:
    ds = authentic_ds(50)
    path = save_splits(make_splits(ds), tmp_path / "s.json")
    with pytest.raises(DatasetError, match="stale split file: made for 50 images"):
        load_splits(path, authentic_ds(49))
    renamed = IQADataset(
        name="auth",
        root=Path("/data"),
        paths=tuple(Path(f"/data/b{i:05d}.jpg") for i in range(50)),
        scores=np.zeros(50),
        mos_type="mos",
        score_range=(0, 1),
        synthetic=False,
    )
    with pytest.raises(DatasetError, match="do not match"):
        load_splits(path, renamed)


def test_reordered_dataset_is_remapped_by_name(tmp_path: Path) -> None:
    ds = authentic_ds(30)
    sp = make_splits(ds, n_splits=2)
    path = save_splits(sp, tmp_path / "s.json")
    order = np.random.default_rng(0).permutation(30)
    shuffled = ds.subset(order)
    loaded = load_splits(path, shuffled)
    for s in range(2):
        for orig, new in zip(sp.split(s), loaded.split(s), strict=True):
            assert sorted(p.name for p in shuffled.subset(new).paths) == sorted(
                p.name for p in ds.subset(orig).paths
            )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "not a readable split file"),
        ('{"format": "other"}', "not a shamisa split file"),
        ('{"format": "shamisa-splits", "version": 99}', "version 99"),
        ('{"format": "shamisa-splits", "version": 1, "dataset": "x"}', "malformed split file"),
        (
            '{"format": "shamisa-splits", "version": 1, "dataset": "x", "seed": 1, "kind": "random", '
            '"n_images": 3, "images": null, "splits": [{"train": [0, 5], "val": [], "test": [1]}]}',
            "outside",
        ),
        (
            '{"format": "shamisa-splits", "version": 1, "dataset": "x", "seed": 1, "kind": "random", '
            '"n_images": 3, "images": null, "splits": [{"train": [0, 1], "val": [], "test": [1]}]}',
            "more than one part",
        ),
        (
            '{"format": "shamisa-splits", "version": 1, "dataset": "x", "seed": 1, "kind": "weird", '
            '"n_images": 3, "images": null, "splits": [{"train": [0], "val": [], "test": [1]}]}',
            "split kind",
        ),
    ],
)
def test_malformed_split_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_splits(path)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_splits(tmp_path / "none.json")


def test_get_or_create_reuses_and_regenerates(tmp_path: Path) -> None:
    ds = authentic_ds(40)
    cache = tmp_path / "cache" / "auth.json"
    first = get_or_create_splits(ds, cache)
    assert cache.is_file()
    mtime = cache.stat().st_mtime_ns
    again = get_or_create_splits(ds, cache)
    assert cache.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert all(np.array_equal(a, b) for a, b in zip(first.test, again.test, strict=True))
    other_seed = get_or_create_splits(ds, cache, seed=1)
    assert other_seed.seed == 1 and load_splits(cache).seed == 1
    fewer = get_or_create_splits(ds, cache, n_splits=3, seed=1)
    assert len(fewer) == 3
    bigger = authentic_ds(45)
    regenerated = get_or_create_splits(bigger, cache, n_splits=3, seed=1)  # stale -> remade
    _assert_partition(regenerated, 45)
    cache.write_text("garbage")
    assert len(get_or_create_splits(ds, cache)) == 10


# ----------------------------------------------------------------------------- ARNIQA .npy files


def _padded(rows: list[list[int]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)


def test_arniqa_npy_with_padding(tmp_path: Path) -> None:
    ds = authentic_ds(10)
    folder = tmp_path / "CLIVE" / "splits"
    folder.mkdir(parents=True)
    np.save(folder / "train.npy", _padded([[0, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4]]))
    np.save(folder / "val.npy", _padded([[7], [3, 2]]))
    np.save(folder / "test.npy", _padded([[8, 9], [1, 0]]))
    sp = load_arniqa_splits(tmp_path / "CLIVE", ds)  # the parent folder works too
    assert sp.kind == "arniqa" and len(sp) == 2 and sp.dataset == "auth"
    assert sp.train[1].tolist() == [4, 5, 6, 7, 8, 9]  # padding dropped, sorted
    assert sp.val[0].tolist() == [7] and sp.test[1].tolist() == [0, 1]
    assert not any((a < 0).any() for part in (sp.train, sp.val, sp.test) for a in part)
    # round trip through the JSON format
    loaded = load_splits(save_splits(sp, tmp_path / "a.json"), ds)
    assert loaded.kind == "arniqa" and loaded.train[1].tolist() == [4, 5, 6, 7, 8, 9]


def test_arniqa_single_split_1d(tmp_path: Path) -> None:
    ds = authentic_ds(6)
    np.save(tmp_path / "train.npy", np.array([0, 1, 2, 3]))
    np.save(tmp_path / "val.npy", np.array([4]))
    np.save(tmp_path / "test.npy", np.array([5]))
    sp = load_arniqa_splits(tmp_path, ds)
    assert len(sp) == 1 and sp.test[0].tolist() == [5]


def test_arniqa_errors(tmp_path: Path) -> None:
    ds = authentic_ds(5)
    with pytest.raises(DatasetError, match=r"train\.npy"):
        load_arniqa_splits(tmp_path, ds)
    np.save(tmp_path / "train.npy", _padded([[0, 1], [1, 2]]))
    np.save(tmp_path / "val.npy", _padded([[2]]))
    np.save(tmp_path / "test.npy", _padded([[3], [4]]))
    with pytest.raises(DatasetError, match="different numbers of splits"):
        load_arniqa_splits(tmp_path, ds)
    np.save(tmp_path / "val.npy", _padded([[2], [0]]))
    np.save(tmp_path / "test.npy", _padded([[9], [4]]))
    with pytest.raises(DatasetError, match="outside"):
        load_arniqa_splits(tmp_path, ds)
