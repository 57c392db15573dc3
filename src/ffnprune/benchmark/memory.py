"""Peak memory of a stretch of work: allocated CUDA memory on a GPU, resident set size on Linux CPUs."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def return_freed_memory_promptly() -> bool:
    """Make glibc hand every block of 128 KiB or more back to the OS when it is freed (and trim what it holds now).

    By default glibc keeps freed memory for reuse, so the resident set stays at its high-water mark and a second
    workload in the same process seems to need nothing. With this, the resident set follows the live tensors and
    PeakMemory's CPU figures compare workloads run one after another. It slows allocation (fresh pages each time):
    time nothing after calling it. Returns False where it is not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_mmap_threshold = -3
    if not libc.mallopt(m_mmap_threshold, 128 * 1024):
        return False
    _trim()
    return True


def _trim() -> None:
    """Give the OS the free pages glibc still holds, so the resident set counts live memory only."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _status_bytes(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`, then `peak.bytes` (the highest memory in use during the block) and
    `peak.added` (that peak minus what was in use when the block began). On CUDA both count PyTorch's allocations on
    the device; on CPU they are the process's resident set (Linux; peak reset through /proc/self/clear_refs), so
    they include everything the process holds. None where the platform cannot tell."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.added: int | None = None
        self._start: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _trim()
            try:
                CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
            except OSError:
                return self
            self._start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = _status_bytes("VmHWM")
        if self.bytes is not None:
            self.added = self.bytes - self._start
