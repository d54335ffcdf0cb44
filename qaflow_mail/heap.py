"""Give large freed buffers back to the system, so the resident size follows the mail in hand, not its peak.

A big message passes through several buffers of its own size (read back from its spool, pickled to a worker
process, decoded attachments). glibc serves such buffers with mmap and returns them on free, but after the first
such free it raises its mmap threshold (up to 32 MB), and from then on they come from the heap, where freed
memory mostly stays resident: the process keeps the size of its worst moment. Fixing the threshold keeps large
buffers on mmap. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 256 * 1024


def libc() -> ctypes.CDLL | None:
    """The C library, or None where none can be loaded."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim() -> None:
    """Hand the free pages of the heap back to the system (after a big message in a worker process)."""
    malloc_trim = getattr(libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(ctypes.c_size_t(0))


def return_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of `threshold` bytes and more by mmap from now on; True when the C library agreed."""
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return False
    done = bool(mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(threshold)))
    log.debug("heap.mmap_threshold bytes=%d applied=%s", threshold, done)
    return done
