"""Reading the MATLAB ``.mat`` label files of the LIVE-family releases (CLIVE, LIVE Release 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shamisa.errors import DatasetError


def load_mat_variable(path: Path, key: str) -> np.ndarray:
    """The variable ``key`` of a MATLAB v5/v7 file (``scipy.io.loadmat``), unchanged.

    Raises:
        DatasetError: the file is missing, unreadable, or has no variable ``key``.
    """
    import scipy.io

    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected a MATLAB file with variable {key!r})")
    try:
        data = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError, TypeError) as e:
        raise DatasetError(f"{path}: not a readable MATLAB v5/v7 file ({e})") from e
    if key not in data:
        found = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise DatasetError(f"{path}: no variable {key!r} (found: {found})")
    return np.asarray(data[key])


def mat_strings(path: Path, key: str) -> list[str]:
    """A MATLAB cell array (or char matrix) of strings as a flat list of Python strings.

    Shapes accepted: (N, 1) / (1, N) cells of 1-element string arrays, or an (N, L) char matrix.
    """
    arr = load_mat_variable(path, key)
    if arr.dtype.kind == "U":  # char matrix: one padded string per row
        return (
            [str(s).strip() for s in arr.reshape(arr.shape[0], -1).tolist()]
            if arr.ndim > 1
            else [str(s).strip() for s in arr.tolist()]
        )
    out: list[str] = []
    for item in arr.reshape(-1):
        value = np.asarray(item).reshape(-1)
        if value.size != 1:
            raise DatasetError(f"{path}: {key!r} entry is not a single string: {item!r}")
        out.append(str(value[0]).strip())
    return out


def mat_vector(path: Path, key: str) -> np.ndarray:
    """A numeric MATLAB row or column vector as a float64 array (N,)."""
    arr = load_mat_variable(path, key)
    if arr.dtype.kind not in "fiub":
        raise DatasetError(f"{path}: {key!r} is not numeric (dtype {arr.dtype})")
    if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) > 1):
        raise DatasetError(f"{path}: {key!r} is not a vector (shape {arr.shape})")
    return arr.astype(np.float64).reshape(-1)
