"""What the trainer, CLI and benchmarks expect of an algorithm."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..batch import Batch


@runtime_checkable
class Agent(Protocol):
    """An offline RL agent.

    ``update`` does one gradient step (critic every step, actor on its own schedule) and
    returns detached 0-dim tensors keyed by name, so a caller converts to floats only when
    it logs (no device sync per step). ``act`` maps *normalised* observations to actions.
    ``state_dict`` holds everything needed to resume exactly, as tensors, numbers, strings
    and nested dicts/lists of them (loadable with ``torch.load(weights_only=True)``).
    """

    config: Any
    num_updates: int  # gradient steps done so far

    def update(self, batch: Batch) -> dict[str, Tensor]: ...

    def act(self, observations: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
