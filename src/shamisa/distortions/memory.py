"""Allocator settings for processes that run the distortion engine on the CPU.

The engine allocates and frees many image-sized temporaries (a few MiB each) and one output of some 70 MiB
per structured item. With glibc's defaults, blocks of that size are mapped from the kernel and returned to
it when freed, and the next allocation page-faults on every 4 KiB page it touches (on one core: ~5 % of the
time of a structured item for the temporaries, another ~7 % for the item's output; up to a third of a single
Lab-based distortion of 8 crops). :func:`keep_heap` makes glibc serve every block from its heap (no mmap
for large blocks, which glibc could otherwise only avoid below 32 MiB) and keep up to 256 MiB of freed
memory there, so that freed memory is reused instead. It changes no result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
#: Largest mmap threshold glibc accepts on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``): blocks below it come
#: from the heap.
MMAP_THRESHOLD = 32 << 20
#: Freed memory kept at the top of the heap before it is returned to the kernel.
TRIM_THRESHOLD = 256 << 20

_done: set[int] = set()


def keep_heap() -> bool:
    """Make glibc keep freed tensor memory in the heap (idempotent per process).

    Process-wide; meant for data workers and benchmarks. Disabled by ``SHAMISA_KEEP_HEAP=0``. No-op (returns
    False) on other C libraries.

    Returns:
        Whether the settings are in effect in this process.
    """
    pid = os.getpid()
    if pid in _done:
        return True
    if os.environ.get("SHAMISA_KEEP_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and ok  # large blocks from the heap too (glibc falls back to mmap if it cannot grow)
    if ok:
        _done.add(pid)
    return ok
