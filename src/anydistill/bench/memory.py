"""Peak extra memory of a piece of work, on any device.

CUDA has allocator statistics (`torch.cuda.max_memory_allocated`). The CPU has none, so there
every tensor storage created while the tracker is active is counted from the op that creates
it until Python frees it (a weakref finalizer on the storage). That is the same quantity the
CUDA statistics report — bytes of live tensors — minus allocator rounding.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

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
