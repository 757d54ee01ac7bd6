"""Dataset loaders on tiny fixtures in the official layouts (tests/fixtures/datasets, clive_mini)."""

from __future__ import annotations

import csv
import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from shamisa.datasets import DATASETS, IQADataset, dataset_info, load_dataset
from shamisa.errors import DatasetError, ShamisaError

FIX = Path(__file__).parents[1] / "fixtures"
DS_FIX = FIX / "datasets"
CLIVE_MINI = FIX / "clive_mini"

# expected (n images, mos_type, range, synthetic, n refs) per fixture
EXPECTED = {
    "live": (15, "dmos", (1.0, 100.0), True, 3),
    "csiq": (16, "dmos", (0.0, 1.0), True, 4),
    "tid2013": (16, "mos", (0.0, 9.0), True, 4),
    "kadid10k": (16, "mos", (1.0, 5.0), True, 4),
    "koniq10k": (10, "mos", (1.0, 5.0), False, 0),
    "spaq": (10, "mos", (0.0, 100.0), False, 0),
    "flive": (12, "mos", (1.0, 100.0), False, 0),
}


def _copy_fixture(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(DS_FIX / name, dest)
    return dest


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _make_images(folder: Path, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(folder / n)


# ----------------------------------------------------------------------------- every loader


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_on_fixture(name: str) -> None:
    n, mos_type, score_range, synthetic, n_refs = EXPECTED[name]
    ds = load_dataset(name, DS_FIX / name)
    assert isinstance(ds, IQADataset)
    assert ds.name == name and len(ds) == n
    assert ds.mos_type == mos_type and ds.score_range == score_range
    assert ds.synthetic is synthetic and ds.higher_is_better() is (mos_type == "mos")
    assert ds.scores.dtype == np.float64 and ds.scores.shape == (n,)
    assert np.all(np.isfinite(ds.scores))
    assert all(p.is_absolute() and p.is_file() for p in ds.paths)
    assert len(set(ds.paths)) == n
    if synthetic:
        assert ds.refs is not None and len(set(ds.refs)) == n_refs
        assert ds.dist_types is not None and len(ds.dist_types) == n
        # no reference image is part of a synthetic dataset
        assert not any(p.parent.name in {"refimgs", "src_imgs", "reference_images"} for p in ds.paths)
    else:
        assert ds.refs is None
    info = dataset_info(name)
    assert (info.mos_type, info.score_range, info.synthetic) == (mos_type, score_range, synthetic)


def test_registry_lists_every_dataset() -> None:
    assert set(DATASETS) == set(EXPECTED) | {"clive"}
    assert dataset_info("LIVEC").name == "clive" and dataset_info("koniq").name == "koniq10k"
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("nope", DS_FIX)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_root_is_a_dataset_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "absent"))):
        load_dataset(name, tmp_path / "absent")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_image_is_named(name: str, tmp_path: Path) -> None:
    root = _copy_fixture(name, tmp_path)
    ds = load_dataset(name, root)
    victim = ds.paths[len(ds) // 2]
    victim.unlink()
    with pytest.raises(DatasetError, match=re.escape(victim.name)):
        load_dataset(name, root)
    assert len(load_dataset(name, root, check_files=False)) == len(ds)


def test_unknown_loader_option_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="clive"):
        load_dataset("clive", CLIVE_MINI, colour="red")


# ----------------------------------------------------------------------------- CLIVE


def test_clive_mini_drops_the_seven_training_entries() -> None:
    ds = load_dataset("clive", CLIVE_MINI)
    names = scipy.io.loadmat(CLIVE_MINI / "Data" / "AllImages_release.mat")["AllImages_release"]
    listed = [str(np.asarray(x).reshape(-1)[0]) for x in names.reshape(-1)]
    mos = scipy.io.loadmat(CLIVE_MINI / "Data" / "AllMOS_release.mat")["AllMOS_release"].reshape(-1)
    std = scipy.io.loadmat(CLIVE_MINI / "Data" / "AllStdDev_release.mat")["AllStdDev_release"].reshape(-1)
    assert listed[:7] == [f"t{i}.bmp" for i in range(1, 8)]
    assert len(ds) == len(listed) - 7 == 8
    assert [p.name for p in ds.paths] == listed[7:]
    np.testing.assert_array_equal(ds.scores, mos[7:])
    assert ds.std is not None
    np.testing.assert_array_equal(ds.std, std[7:])
    assert ds.mos_type == "mos" and ds.score_range == (0.0, 100.0) and not ds.synthetic
    assert all(0 <= s <= 100 for s in ds.scores)
    assert all(p.parent == CLIVE_MINI.resolve() / "Images" for p in ds.paths)
    assert (CLIVE_MINI / "README.txt").read_text().count("COPYRIGHT NOTICE") == 2


def test_clive_missing_mat_and_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "ChallengeDB_release"
    shutil.copytree(CLIVE_MINI, root)
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.ones((1, 5))})
    with pytest.raises(DatasetError, match="MOS values"):
        load_dataset("clive", root)
    (root / "Data" / "AllMOS_release.mat").unlink()
    with pytest.raises(DatasetError, match=r"AllMOS_release\.mat"):
        load_dataset("clive", root)
    shutil.rmtree(root / "Images")
    with pytest.raises(DatasetError, match="Images"):
        load_dataset("clive", root)


def test_clive_wrong_variable_name(tmp_path: Path) -> None:
    root = tmp_path / "c"
    shutil.copytree(CLIVE_MINI, root)
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"something_else": np.ones((1, 15))})
    with pytest.raises(DatasetError, match="AllMOS_release"):
        load_dataset("clive", root)


# ----------------------------------------------------------------------------- per-layout details


def test_live_reference_entries_dropped_and_labels() -> None:
    root = DS_FIX / "live"
    ds = load_dataset("live", root)
    orgs = scipy.io.loadmat(root / "dmos_realigned.mat")["orgs"].reshape(-1)
    dmos_new = scipy.io.loadmat(root / "dmos_realigned.mat")["dmos_new"].reshape(-1)
    np.testing.assert_array_equal(ds.scores, dmos_new[orgs == 0])
    assert not any(p.name == "img4.bmp" for p in ds.paths)  # img4 is the reference copy in each folder
    assert ds.std is not None and np.all(ds.std == 7.5)
    plain = load_dataset("live", root, realigned=False)
    dmos = scipy.io.loadmat(root / "dmos.mat")["dmos"].reshape(-1)
    np.testing.assert_array_equal(plain.scores, dmos[orgs == 0])
    assert plain.std is None
    assert ds.dist_types is not None and ds.dist_types.count("jp2k") == 3


def test_live_inconsistent_counts(tmp_path: Path) -> None:
    root = _copy_fixture("live", tmp_path)
    info = root / "wn" / "info.txt"
    info.write_text(info.read_text() + "parrots.bmp img5.bmp 0.5\n")
    with pytest.raises(DatasetError, match="inconsistent LIVE labels"):
        load_dataset("live", root)


def test_live_txt_table(tmp_path: Path) -> None:
    root = _copy_fixture("live", tmp_path)
    _write_csv(
        root / "LIVE.txt",
        ["dis_img_path", "dis_type", "ref_img_path", "score"],
        [
            ["LIVE/jp2k/img1.bmp", "jp2k", "LIVE/refimgs/buildings.bmp", 30.5],
            ["LIVE/wn/img2.bmp", "wn", "LIVE/refimgs/parrots.bmp", 50.0],
        ],
    )
    ds = load_dataset("live", root)
    assert len(ds) == 2 and ds.refs == ("buildings", "parrots") and ds.dist_types == ("jp2k", "wn")
    assert ds.paths[0] == root.resolve() / "jp2k" / "img1.bmp"
    assert len(load_dataset("live", root, labels="mat")) == 15


def test_csiq_refs_and_prefix_stripping() -> None:
    ds = load_dataset("csiq", DS_FIX / "csiq")
    assert ds.paths[0].parent.parent.name == "dst_imgs"
    assert ds.refs is not None and set(ds.refs) == {"1600", "aerial_city", "boston", "bridge"}
    for p, r in zip(ds.paths, ds.refs, strict=True):
        assert p.name.startswith(r + ".")


def test_tid2013_refs_types_and_case() -> None:
    ds = load_dataset("tid2013", DS_FIX / "tid2013")
    assert ds.refs is not None and ds.dist_types is not None
    for p, r, t in zip(ds.paths, ds.refs, ds.dist_types, strict=True):
        assert p.name.upper().startswith(r.upper() + "_")
        kind = int(p.name.split("_")[1])
        assert t == ("additive_gaussian_noise" if kind == 1 else "gaussian_blur")
    assert any(p.name.startswith("I04") for p in ds.paths)  # found on disk despite lower-case label


def test_tid2013_malformed_line(tmp_path: Path) -> None:
    root = _copy_fixture("tid2013", tmp_path)
    with open(root / "mos_with_names.txt", "a") as f:
        f.write("abc i01_01_1.bmp\n")
    with pytest.raises(DatasetError, match="malformed line"):
        load_dataset("tid2013", root)


def test_kadid_std_types_refs() -> None:
    ds = load_dataset("kadid10k", DS_FIX / "kadid10k")
    assert ds.std is not None and np.all(ds.std > 0)
    assert ds.dist_types is not None and set(ds.dist_types) == {"gaussian_blur", "jpeg"}
    assert ds.refs is not None and all(
        p.name.startswith(r + "_") for p, r in zip(ds.paths, ds.refs, strict=True)
    )


def test_koniq_resolution_and_zscore(tmp_path: Path) -> None:
    ds = load_dataset("koniq10k", DS_FIX / "koniq10k", score="MOS_zscore")
    assert ds.score_range == (0.0, 100.0) and ds.std is None
    mos = load_dataset("koniq10k", DS_FIX / "koniq10k")
    np.testing.assert_allclose(ds.scores, (mos.scores - 1) * 25, atol=1e-3)
    with pytest.raises(DatasetError, match="512x384"):
        load_dataset("koniq10k", DS_FIX / "koniq10k", resolution="512x384")
    root = _copy_fixture("koniq10k", tmp_path)
    (root / "1024x768").rename(root / "512x384")
    assert load_dataset("koniq10k", root).paths[0].parent.name == "512x384"


def test_spaq_xlsx_without_openpyxl(tmp_path: Path) -> None:
    root = _copy_fixture("spaq", tmp_path)
    csv_path = root / "Annotations" / "MOS and Image attribute scores.csv"
    csv_path.unlink()
    (root / "Annotations" / "MOS and Image attribute scores.xlsx").write_bytes(b"PK\x03\x04 not really")
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetError, match="pip install openpyxl"):
            load_dataset("spaq", root)
    else:
        with pytest.raises(DatasetError, match="xlsx"):
            load_dataset("spaq", root)
    (root / "Annotations" / "MOS and Image attribute scores.xlsx").unlink()
    with pytest.raises(DatasetError, match="MOS and Image attribute scores"):
        load_dataset("spaq", root)


def test_flive_official_split_from_flags() -> None:
    ds = load_dataset("flive", DS_FIX / "flive")
    assert ds.official_split is not None
    labels = np.asarray(ds.official_split)
    assert list(np.flatnonzero(labels == "test")) == [5, 10, 11]
    assert list(np.flatnonzero(labels == "val")) == [2, 7]
    assert all(p.parent.name == "database" for p in ds.paths)


@pytest.mark.parametrize(
    ("columns", "values", "expected"),
    [
        (["split"], [["train"], ["validation"], ["test"], ["train"]], ["train", "val", "test", "train"]),
        (
            ["is_test"],
            [["0"]] * 7 + [["1"]],
            ["val"] + ["train"] * 6 + ["test"],
        ),  # val = first 12.5% of non-test
        # is_valid only: those rows are the held-out test set; val = first 12.5% of the 8 others
        (["is_valid"], [["False"], ["True"]] + [["False"]] * 7, ["val", "test"] + ["train"] * 7),
    ],
)
def test_flive_split_rules(
    tmp_path: Path, columns: list[str], values: list[list[str]], expected: list[str]
) -> None:
    root = tmp_path / "flive"
    names = [f"x{i}.jpg" for i in range(len(values))]
    _make_images(root, names)
    _write_csv(
        root / "labels_image.csv",
        ["name", "mos", *columns],
        [[n, 50 + i, *v] for i, (n, v) in enumerate(zip(names, values, strict=True))],
    )
    ds = load_dataset("flive", root)
    assert list(ds.official_split or ()) == expected


def test_flive_without_split_columns(tmp_path: Path) -> None:
    root = tmp_path / "flive"
    _make_images(root, ["a.jpg"])
    _write_csv(root / "labels_image.csv", ["name", "mos"], [["a.jpg", 3]])
    with pytest.raises(DatasetError, match="load_arniqa_splits"):
        load_dataset("flive", root)


def test_non_numeric_score_in_official_table(tmp_path: Path) -> None:
    root = _copy_fixture("kadid10k", tmp_path)
    lines = (root / "dmos.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0] + ",high,0.1"
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 4"):
        load_dataset("kadid10k", root)


# ----------------------------------------------------------------------------- IQADataset


def test_subset_and_immutability() -> None:
    ds = load_dataset("kadid10k", DS_FIX / "kadid10k")
    idx = np.array([5, 0, 3])
    sub = ds.subset(idx)
    assert len(sub) == 3 and sub.paths == tuple(ds.paths[i] for i in idx)
    np.testing.assert_array_equal(sub.scores, ds.scores[idx])
    assert sub.refs == tuple(ds.refs[i] for i in idx)  # type: ignore[index]
    assert sub.std is not None and np.array_equal(sub.std, ds.std[idx])  # type: ignore[index]
    assert sub.mos_type == ds.mos_type and sub.score_range == ds.score_range
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ds.scores[0] = 1.0
    with pytest.raises(IndexError):
        ds.subset(np.array([len(ds)]))
    assert len(ds.subset(np.array([], dtype=int))) == 0


def test_dataset_validation() -> None:
    with pytest.raises(DatasetError, match="scores"):
        IQADataset("x", Path("/"), (Path("/a"),), np.zeros(2), "mos", (0, 1), False)
    with pytest.raises(DatasetError, match="mos_type"):
        IQADataset("x", Path("/"), (Path("/a"),), np.zeros(1), "bad", (0, 1), False)
    with pytest.raises(DatasetError, match="refs"):
        IQADataset("x", Path("/"), (Path("/a"),), np.zeros(1), "mos", (0, 1), True, refs=("a", "b"))
    with pytest.raises(DatasetError, match="score_range"):
        IQADataset("x", Path("/"), (Path("/a"),), np.zeros(1), "mos", (1, 1), False)


# ----------------------------------------------------------------------------- generic CSV


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    _make_images(tmp_path / "imgs", [f"im{i}.png" for i in range(6)])
    return tmp_path


def test_csv_basic(csv_folder: Path) -> None:
    path = _write_csv(
        csv_folder / "labels.csv", ["path", "score"], [[f"imgs/im{i}.png", 10 * i + 5] for i in range(6)]
    )
    ds = load_dataset("csv", path)
    assert len(ds) == 6 and ds.name == "csv" and ds.mos_type == "mos"
    assert ds.score_range == (5.0, 55.0)  # observed min / max
    assert ds.paths[2] == (csv_folder / "imgs" / "im2.png").resolve()
    assert not ds.synthetic and ds.refs is None and ds.skipped == ()
    ds2 = load_dataset("csv", path, mos_type="dmos", score_range=(0, 100))
    assert ds2.score_range == (0.0, 100.0) and not ds2.higher_is_better()


def test_csv_alternative_columns_and_refs(csv_folder: Path) -> None:
    rows = [[f"imgs/im{i}.png", f"{i * 0.5:.2f}", f"ref{i % 3}", "blur"] for i in range(6)]
    path = _write_csv(csv_folder / "l.csv", ["Filename", "DMOS", "Reference", "dist_type"], rows)
    ds = load_dataset("csv", path)
    assert ds.mos_type == "dmos" and ds.synthetic and ds.refs == tuple(f"ref{i % 3}" for i in range(6))
    assert ds.dist_types == ("blur",) * 6


def test_csv_absolute_paths_and_image_root(csv_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = _write_csv(
        other / "l.csv", ["image", "mos"], [[str(csv_folder / "imgs" / "im0.png"), 1], ["im1.png", 2]]
    )
    ds = load_dataset("csv", path, image_root=csv_folder / "imgs")
    assert ds.paths[0] == csv_folder / "imgs" / "im0.png" and ds.paths[1].name == "im1.png"


BAD_ROWS = [
    ["imgs/im0.png", "1.5"],
    ["", "2.0"],  # line 3: no path
    ["imgs/im1.png", "nan"],  # line 4: NaN
    ["imgs/im2.png", "good"],  # line 5: text label
    ["imgs/im3.png", ""],  # line 6: empty score
    ["imgs/missing.png", "3"],  # line 7: missing file
    ["imgs/im4.png", "4.5"],
]


def test_csv_malformed_rows_raise_with_line_numbers(csv_folder: Path) -> None:
    path = _write_csv(csv_folder / "bad.csv", ["path", "score"], BAD_ROWS)
    with pytest.raises(DatasetError) as err:
        load_dataset("csv", path)
    msg = str(err.value)
    assert "5 malformed row(s)" in msg and "skip_bad=True" in msg
    for line in (3, 4, 5, 6, 7):
        assert f"line {line}:" in msg
    assert "missing.png" in msg and "'good'" in msg
    assert isinstance(err.value, ShamisaError)


def test_csv_skip_bad_records_skipped_rows(csv_folder: Path) -> None:
    path = _write_csv(csv_folder / "bad.csv", ["path", "score"], BAD_ROWS)
    ds = load_dataset("csv", path, skip_bad=True)
    assert [p.name for p in ds.paths] == ["im0.png", "im4.png"]
    np.testing.assert_array_equal(ds.scores, [1.5, 4.5])
    assert [s.line for s in ds.skipped] == [3, 4, 5, 6, 7]
    reasons = [s.reason for s in ds.skipped]
    assert "missing image path" in reasons[0] and "not a finite number" in reasons[1]
    assert "missing score" in reasons[3] and "not found" in reasons[4]
    assert ds.skipped[4].path == "imgs/missing.png"
    # subsets keep the record of skipped rows
    assert ds.subset(np.array([1])).skipped == ds.skipped


def test_csv_header_problems(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("csv", tmp_path / "none.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset("csv", empty)
    nocol = _write_csv(tmp_path / "nocol.csv", ["file_path", "quality"], [["a.png", 1]])
    with pytest.raises(DatasetError, match="image path column"):
        load_dataset("csv", nocol)
    only_bad = _write_csv(tmp_path / "onlybad.csv", ["path", "score"], [["a.png", "x"]])
    with pytest.raises(DatasetError, match="no valid rows"):
        load_dataset("csv", only_bad, skip_bad=True)


def test_csv_constant_scores_range(csv_folder: Path) -> None:
    path = _write_csv(csv_folder / "c.csv", ["path", "score"], [["imgs/im0.png", 3], ["imgs/im1.png", 3]])
    assert load_dataset("csv", path).score_range == (2.0, 4.0)


def test_csv_tab_separated(csv_folder: Path) -> None:
    path = csv_folder / "t.tsv"
    path.write_text("path\tscore\nimgs/im0.png\t1\nimgs/im1.png\t2\n")
    assert len(load_dataset("csv", path)) == 2
