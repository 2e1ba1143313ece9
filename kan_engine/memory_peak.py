"""A tensor-memory meter that works on every device: the CPU too, where torch keeps no statistics.

Tests and benchmarks check memory claims with it ("the spline part's transient memory is bounded
by the chunk"), and `memory.measure` builds the training-memory estimate on it. It sees tensor
storages, not allocator blocks: no caching, no fragmentation, the same figures on any machine.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["TensorMemoryPeak"]


class TensorMemoryPeak(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the `with` block and alive at the same time.

    Every op's outputs are recorded with a weak reference to their storage; the live total is
    summed after each op (`live_bytes`), and kept per op in `timeline` when asked for
    (`timeline=True`: the estimate fits lines through it). Backward ops run inside the block are
    seen too. Tensors that existed before the block are not counted. Slow: for measurement only.
    """

    def __init__(self, *, timeline: bool = False) -> None:
        super().__init__()
        self.peak = 0
        self.timeline: list[int] = []  # live bytes after each op, with `timeline=True`
        self._record = timeline
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}

    def live_bytes(self) -> int:
        """Bytes of the storages made inside the block that are alive after the last op."""
        return sum(size for _, size in self._live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self._live = {key: v for key, v in self._live.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                self._live.setdefault(ref.cdata, (ref, storage.nbytes()))
        live = self.live_bytes()
        self.peak = max(self.peak, live)
        if self._record:
            self.timeline.append(live)
        return out
