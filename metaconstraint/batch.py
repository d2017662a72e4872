"""The batch every algorithm consumes."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """A batch of transitions, already on the training device, observations normalised.

    ``terminals`` is 1.0 only for true terminations (a time-limit truncation is not one:
    bootstrapping continues). ``next_actions`` is the dataset's action at
    ``next_observations`` where the episode continues (ReBRAC needs it), with
    ``next_action_mask`` 1.0 there and 0.0 where it is undefined.
    """

    observations: Tensor  # (B, obs_dim)
    actions: Tensor  # (B, act_dim)
    rewards: Tensor  # (B,)
    next_observations: Tensor  # (B, obs_dim)
    terminals: Tensor  # (B,) float 0/1
    next_actions: Tensor  # (B, act_dim)
    next_action_mask: Tensor  # (B,) float 0/1
