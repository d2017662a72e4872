"""Opt-in captured updates: the whole update, coefficient step included, as one compiled function.

:func:`capture` compiles a pure update function with ``torch.compile`` (``fullgraph=True``, so a
graph break is an error, not a silent slowdown): CUDA graphs (``mode="reduce-overhead"``) on a
GPU, the default mode elsewhere. What it captures is :class:`~metaconstraint.algos.ensemble.SeedEnsemble`'s
functional update (every tensor of the state in, the new state out; random draws made beforehand
from each seed's own generator), one compiled function per kind of update (critic only, with the
actor step, with the coefficient step), each compiled once. :class:`~metaconstraint.algos.ensemble.CapturedAgent` gives a single
TD3+BC or ASPC agent the same engine (an ensemble of one).

Optimizer step counts are Python ints in eager mode; a compiled function would specialise on
them and recompile every step, so the captured state keeps them as tensors of the parameters'
dtype (exact up to 2**24 steps in float32; :func:`counts_as_tensors`) and turns them back into
ints for checkpoints (:func:`counts_as_ints`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def capture(fn: Callable[..., Any], device: torch.device | str) -> Callable[..., Any]:
    """``fn`` compiled whole: CUDA graphs on a CUDA device, the default ``torch.compile`` mode elsewhere."""
    cuda = torch.device(device).type == "cuda"
    # every captured update compiles the same code object (a partial of one update function) with other
    # settings; dynamo's default of 8 per code object is too few for a process that captures several agents
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(fn, mode="reduce-overhead" if cuda else None, fullgraph=True, dynamic=False)
    if not cuda:
        return compiled

    def replay(*args: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()  # the previous update's outputs are this one's inputs
        return compiled(*args)

    return replay


def counts_as_tensors(tree: Any, members: int, device: torch.device | str, dtype: torch.dtype) -> tuple[Any, list[int]]:
    """``tree`` with every int leaf (an optimizer's step count) as a ``(members,)`` tensor of ``dtype``
    (the parameters', so that Adam's bias correction does not promote them), and the positions of
    those leaves for :func:`counts_as_ints`."""
    leaves, spec = tree_flatten(tree)
    positions = [i for i, x in enumerate(leaves) if type(x) is int]
    for i in positions:
        leaves[i] = torch.full((members,), float(leaves[i]), dtype=dtype, device=device)
    return tree_unflatten(leaves, spec), positions


def counts_as_ints(tree: Any, positions: list[int]) -> Any:
    """The inverse of :func:`counts_as_tensors` (one host read per count)."""
    leaves, spec = tree_flatten(tree)
    for i in positions:
        leaves[i] = int(leaves[i][0].item())
    return tree_unflatten(leaves, spec)


__all__ = ["capture", "counts_as_ints", "counts_as_tensors"]
