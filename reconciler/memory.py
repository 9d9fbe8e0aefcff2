"""Giving memory back to the operating system after a burst (a full LIST of every object), and
keeping what lives as long as the process out of the garbage collector's way.

CPython frees its small-object arenas as soon as they are empty, but what it takes from the C
allocator (the pages of JSON text a LIST answer arrives as, large dict tables) is glibc's to
return, and glibc keeps freed heap memory for reuse: after a relist of 25,000 policies the
process stayed 12-15 MB larger than before it, with nothing live in those pages. malloc_trim(0)
hands them back. Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_malloc_trim = _find_malloc_trim()


def release_free_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def freeze_startup_objects() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight, for good: after
    the imports and the set-up they are some 60,000 (modules, classes, functions) that live as
    long as the process, and every full collection walked them all (15 ms here), holding the
    event loop. Call it once, when the process has started and before it does any work."""
    gc.collect()
    gc.freeze()
