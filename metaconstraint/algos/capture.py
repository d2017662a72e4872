"""Opt-in captured updates: the whole update, coefficient step included, as one compiled function.

:func:`capture` compiles a pure update function with ``torch.compile`` (``fullgraph=True``, so a
graph break is an error, not a silent slowdown): CUDA graphs (``mode="reduce-overhead"``) on a
GPU, the default mode elsewhere. What it captures is :class:`~metaconstraint.algos.ensemble.SeedEnsemble`'s
functional update (every tensor of the state in, the new state out; random draws made beforehand
from each seed's own generator), one compiled function per kind of update (critic only, with the
actor step, with the coefficient step), each compiled once. :class:`CapturedAgent` gives a single
TD3+BC or ASPC agent the same engine (an ensemble of one).

Optimizer step counts are Python ints in eager mode; a compiled function would specialise on
them and recompile every step, so the captured state keeps them as tensors of the parameters'
dtype (exact up to 2**24 steps in float32; :func:`counts_as_tensors`) and turns them back into
ints for checkpoints (:func:`counts_as_ints`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..batch import Batch


def capture(fn: Callable[..., Any], device: torch.device | str) -> Callable[..., Any]:
    """``fn`` compiled whole: CUDA graphs on a CUDA device, the default ``torch.compile`` mode elsewhere."""
    cuda = torch.device(device).type == "cuda"
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


class CapturedAgent:
    """A TD3+BC or ASPC agent whose every update runs as one captured function.

    ``CapturedAgent(agent)`` trains ``agent``'s networks through a one-member
    :class:`~metaconstraint.algos.ensemble.SeedEnsemble` with ``compile=True`` (the same random
    draws, from ``agent.rng``, as the eager update). ``agent`` stays the holder of the networks for
    acting, checkpoints and export: it is brought up to date before :meth:`act` and
    :meth:`state_dict`, and by :meth:`sync`. Anything else is read from ``agent``.
    """

    def __init__(self, agent: Any):
        from .ensemble import SeedEnsemble  # the ensemble captures its update with this module

        self.agent = agent
        self.engine = SeedEnsemble.from_agents([agent], compile=True)
        self._stale = False

    def __getattr__(self, name: str) -> Any:  # config, name, metric_names, coefficient_name, ...
        if name in ("agent", "engine"):
            raise AttributeError(name)
        return getattr(self.agent, name)

    @property
    def num_updates(self) -> int:
        return self.engine.num_updates

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One captured update; the logs are 0-dim device tensors, as the agent's own."""
        logs = self.engine.update([batch])
        self._stale = True
        return {k: v[0] for k, v in logs.items()}

    def check_finite(self) -> None:
        """Raise :class:`~metaconstraint.algos.base.NonFiniteError` for the first NaN/Inf since the last call."""
        self.engine.finite_guard.check(self.engine.num_updates)

    def sync(self) -> None:
        """Write the captured state into ``self.agent``."""
        if self._stale:
            self.engine.sync_to_agents()
            self._stale = False

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        self.sync()
        return self.agent.act(observations)

    def state_dict(self) -> dict[str, Any]:
        self.sync()
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state)
        self.engine.load_from_agents()
        self._stale = False


__all__ = ["CapturedAgent", "capture", "counts_as_ints", "counts_as_tensors"]
