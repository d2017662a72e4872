"""Uniform minibatches from a dataset held on the training device.

The whole dataset is converted once (observations normalised, rewards scaled, flags as
floats) and moved to ``device``; ``sample()`` is then a single ``torch.randint`` on the
sampler's own ``torch.Generator`` plus tensor indexing: no Python loop per batch and no
host-to-device copy. ``state_dict()`` holds the generator state, so a resumed run draws the
same batch stream as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..batch import Batch
from .normalization import ObsNormalizer, RewardTransform
from .transitions import Transitions


class Sampler:
    """``Sampler(transitions, batch_size, device, normalizer, reward_scale, seed).sample() -> Batch``.

    ``normalizer``: an :class:`ObsNormalizer` applied to observations and next observations
    (``None``: observations as they are). ``reward_scale``: ``"none"``, ``"locomotion"``,
    ``"antmaze"``, a number (multiplies rewards), or a :class:`RewardTransform`.
    """

    def __init__(
        self,
        transitions: Transitions,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        normalizer: ObsNormalizer | None = None,
        reward_scale: str | float | RewardTransform = "none",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.size = len(transitions)
        self.normalizer = normalizer
        self.reward_transform = (
            reward_scale if isinstance(reward_scale, RewardTransform) else RewardTransform.from_mode(reward_scale, transitions)
        )
        t = transitions
        obs, next_obs = t.observations, t.next_observations
        if normalizer is not None:
            obs, next_obs = normalizer(obs), normalizer(next_obs)

        def put(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype).to(self.device)

        self.observations = put(obs)
        self.actions = put(t.actions)
        self.rewards = put(self.reward_transform(t.rewards.astype(np.float64)))
        self.next_observations = put(next_obs)
        self.terminals = put(t.terminals)
        self.next_actions = put(t.next_actions)
        self.next_action_mask = put(t.next_action_mask)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.batches_drawn = 0

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int | None = None) -> Batch:
        """A uniform batch (with replacement) of ``batch_size`` transitions."""
        n = self.batch_size if batch_size is None else int(batch_size)
        idx = torch.randint(0, self.size, (n,), generator=self.generator, device=self.device)
        self.batches_drawn += 1
        return Batch(
            observations=self.observations[idx],
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            next_observations=self.next_observations[idx],
            terminals=self.terminals[idx],
            next_actions=self.next_actions[idx],
            next_action_mask=self.next_action_mask[idx],
        )

    def state_dict(self) -> dict[str, Any]:
        """Generator state and counters (tensors and ints: ``torch.load(weights_only=True)`` safe)."""
        return {
            "generator": self.generator.get_state(),
            "batches_drawn": self.batches_drawn,
            "seed": self.seed,
            "size": self.size,
            "batch_size": self.batch_size,
            "reward_transform": self.reward_transform.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the batch stream saved by :meth:`state_dict` (same dataset required)."""
        missing = {"generator", "batches_drawn", "size"} - set(state)
        if missing:
            raise KeyError(f"sampler state is missing {sorted(missing)}")
        if int(state["size"]) != self.size:
            raise ValueError(
                f"sampler state was saved for a dataset of {int(state['size'])} transitions; this one has {self.size}"
            )
        self.generator.set_state(state["generator"].cpu() if isinstance(state["generator"], torch.Tensor) else state["generator"])
        self.batches_drawn = int(state["batches_drawn"])
        self.seed = int(state.get("seed", self.seed))
