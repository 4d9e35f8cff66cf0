"""Peak extra memory of a piece of work, on any device.

CUDA has allocator statistics (`torch.cuda.max_memory_allocated`). The CPU has none, so there
every tensor storage created while the tracker is active is counted from the op that creates
it until Python frees it (a weakref finalizer on the storage). That is the same quantity the
CUDA statistics report — bytes of live tensors — minus allocator rounding.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class _LiveStorageBytes(TorchDispatchMode):
    """Counts the bytes of storages created under the mode while they are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage in self._seen:  # a view, or an in-place op's result
                    continue
                nbytes = storage.nbytes()
                self._seen[storage] = nbytes
                weakref.finalize(storage, self._free, nbytes)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
        return out


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while `fn` runs, above what was allocated before it started.

    Whatever `fn` returns is dropped before the measurement ends, so outputs count only while
    they were alive inside the run.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    mode = _LiveStorageBytes()
    with mode:
        fn()
    return mode.peak


# ---- will it fit? -----------------------------------------------------------------------


class NotEnoughMemory(ValueError):
    """A benchmark case that cannot fit on the device: refused before anything is allocated,
    because on the CPU an over-large allocation swaps or meets the OOM killer, not an error."""


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop always returns


def _cgroup_room() -> int | None:
    """Bytes a container's memory limit still allows (cgroup v2), when there is a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _available_ram() -> int:
    """MemAvailable (what can be allocated without swapping), capped by a cgroup limit."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 1 << 62  # cannot tell: do not refuse
    room = _cgroup_room()
    return free if room is None else min(free, room)


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Bytes a new allocation on `device` can use now, and what that memory is called."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    return _available_ram(), "available RAM"


def too_big(what: str, need: int, room: tuple[int, str], device: torch.device, fix: str) -> str:
    """The one sentence for `need` bytes against `room` (free bytes, what they are called)."""
    free, kind = room
    return (
        f"{what} needs about {human_bytes(need)}, more than the {human_bytes(free)} of {kind} "
        f"on {device.type}; {fix}"
    )


def check_fits(need: int, device: torch.device, what: str, fix: str) -> None:
    """NotEnoughMemory with one sentence when `need` bytes exceed what `device` has left."""
    room = available_bytes(device)
    if need > room[0]:
        raise NotEnoughMemory(too_big(what, need, room, device, fix))
