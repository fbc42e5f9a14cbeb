"""Two kernel calls the loader's mapped mode uses, each with a fallback where the kernel
lacks it: whether a file is wholly in the page cache (``cachestat``, Linux 6.5), and
mapping a range of a file mapping from the page cache without touching its pages
(``MADV_POPULATE_READ``, Linux 5.14)."""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _LIBC is not None:
    _LIBC.syscall.restype = ctypes.c_long
    _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# cachestat's number in the table x86_64 and aarch64 share for calls added since Linux
# 5.1; other architectures number it otherwise, and there the question is not asked.
_CACHESTAT = 451 if platform.machine() in ("x86_64", "aarch64") else None
_MADV_POPULATE_READ = 22


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


def fully_cached(fd: int, size: int) -> bool:
    """Whether every page of the file's first ``size`` bytes is in the page cache;
    False where the kernel cannot say."""
    if _LIBC is None or _CACHESTAT is None or size <= 0:
        return False
    stat = _Stat()
    status = _LIBC.syscall(
        ctypes.c_long(_CACHESTAT),
        ctypes.c_long(fd),
        ctypes.byref(_Range(0, size)),
        ctypes.byref(stat),
        ctypes.c_long(0),
    )
    return status == 0 and stat.nr_cache >= -(-size // mmap.PAGESIZE)


def populate(address: int, length: int) -> bool:
    """Map the pages of a file mapping's range [address, address + length) (address
    page-aligned) as read faults would, without the GIL; False where it failed (a kernel
    without it), and the caller touches the pages instead."""
    if _LIBC is None:
        return False
    return int(_LIBC.madvise(address, length, _MADV_POPULATE_READ)) == 0
