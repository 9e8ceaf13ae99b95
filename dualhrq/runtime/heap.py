"""The process's heap out of the garbage collector's way: what serving processes do once they have loaded.

A full collection of the cyclic garbage collector traverses every tracked object, and holds the GIL meanwhile:
a server holding a model has ~150k of them (numba, ONNX Runtime, the pattern library), a broker ~100k (its
imports), and measured full collections took ~100 ms and ~70 ms, each a pause in the replies of the moment
(the max of every bench run). What a process holds once it has started is alive for good, so it is frozen.
"""

from __future__ import annotations

import gc


def freeze_heap(collect: bool) -> None:
    """Move every object alive now out of the cyclic collector's reach (``collect``: after collecting the
    garbage made so far). Frozen, a full collection looks only at what was allocated since. An object that dies
    later is still freed by reference counting, which freezing leaves alone; only garbage in cycles stays."""
    if collect:
        gc.collect()
    gc.freeze()
