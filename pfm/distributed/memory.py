"""CPU memory behaviour of multi-process runs: make glibc give freed large blocks back to the OS at once.

glibc serves a large ``malloc`` with its own ``mmap`` and returns it on ``free``, but only above a threshold
that *rises* to the size of every such block freed (up to 32 MiB). After the first step of a ZeRO-3 or FSDP
run, which gathers and frees whole layers, blocks of a few MiB to 32 MiB come from the heap arenas instead and
stay resident after they are freed: on a 100M-parameter model this held ~0.9 GiB per rank that no tensor used
(benchmarks/README.md, "distributed"). Fixing the threshold keeps the resident set close to what the live
tensors need, at the cost of a page fault per page of each new large block. GPU memory is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["set_cpu_mmap_threshold"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h; setting it also turns off the dynamic threshold


def set_cpu_mmap_threshold(mib: float) -> bool:
    """Serve (and return to the OS on free) every CPU allocation of at least ``mib`` MiB by mmap; glibc only.

    Returns whether the setting took effect (False on a C library without ``mallopt``, e.g. musl or macOS).
    """
    if mib <= 0 or mib > 32:
        raise ValueError(
            f"strategy.cpu_mmap_threshold_mib={mib} is outside (0, 32], the range glibc accepts; "
            "use e.g. 1, or null to leave the C library's default."
        )
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library %s; the CPU mmap threshold stays at its default", name)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mib * 2**20)))
