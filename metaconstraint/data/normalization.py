"""State normalisation and reward scaling, computed once from a dataset.

``ObsNormalizer`` z-normalises observations as the ASPC spec says: ``(s - mean) / (std + eps)``
with ``eps = 1e-3``; it works on numpy arrays and torch tensors alike and travels with the
model through ``state_dict``. ``RewardTransform`` is ``r * scale + shift`` with the modes
used in the field: ``"none"``, ``"locomotion"`` (``x 1000 / (max_return - min_return)`` over
the dataset's episodes) and ``"antmaze"`` (``r - 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .transitions import Transitions

REWARD_MODES = ("none", "locomotion", "antmaze", "center")


class ObsNormalizer:
    """``(obs - mean) / (std + eps)`` on numpy arrays or torch tensors (any leading shape)."""

    def __init__(self, mean: Any, std: Any, eps: float = 1e-3):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"normalizer mean has shape {self.mean.shape} but std has {self.std.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise ValueError("normalizer mean/std contain NaN or Inf")
        if (self.std < 0).any():
            raise ValueError("normalizer std must be >= 0")
        self.eps = float(eps)
        if (self.std + self.eps <= 0).any():
            raise ValueError("normalizer std + eps must be > 0 (a constant feature needs eps > 0)")
        self._torch_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_transitions(cls, transitions: "Transitions", eps: float = 1e-3) -> "ObsNormalizer":
        """Mean and (population) std of the dataset's observations, in float64 then float32."""
        obs = np.asarray(transitions.observations, dtype=np.float64)
        return cls(obs.mean(axis=0), obs.std(axis=0), eps)

    @classmethod
    def identity(cls, obs_dim: int) -> "ObsNormalizer":
        """A normaliser that changes nothing (mean 0, std 1, eps 0)."""
        return cls(np.zeros(obs_dim), np.ones(obs_dim), eps=0.0)

    @property
    def obs_dim(self) -> int:
        return int(self.mean.shape[0])

    def _check(self, x_dim: int) -> None:
        if x_dim != self.obs_dim:
            raise ValueError(f"observation has {x_dim} features but the normalizer was fitted on {self.obs_dim}")

    def _torch(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = (
                torch.as_tensor(self.mean, device=like.device, dtype=like.dtype),
                torch.as_tensor(self.std + self.eps, device=like.device, dtype=like.dtype),
            )
        return self._torch_cache[key]

    def __call__(self, obs: Any) -> Any:
        return self.normalize(obs)

    def normalize(self, obs: Any) -> Any:
        """Normalised observations, same type (numpy float32 or the tensor's dtype/device)."""
        if isinstance(obs, torch.Tensor):
            self._check(obs.shape[-1])
            mean, denom = self._torch(obs if obs.is_floating_point() else obs.float())
            return (obs - mean) / denom
        x = np.asarray(obs, dtype=np.float32)
        self._check(x.shape[-1])
        return ((x - self.mean) / (self.std + self.eps)).astype(np.float32)

    def denormalize(self, obs: Any) -> Any:
        """Inverse of :meth:`normalize`."""
        if isinstance(obs, torch.Tensor):
            self._check(obs.shape[-1])
            mean, denom = self._torch(obs)
            return obs * denom + mean
        x = np.asarray(obs, dtype=np.float32)
        self._check(x.shape[-1])
        return (x * (self.std + self.eps) + self.mean).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and a float: loadable with ``torch.load(weights_only=True)``."""
        return {"mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy()), "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        other = ObsNormalizer.from_state_dict(state)
        self.mean, self.std, self.eps = other.mean, other.std, other.eps
        self._torch_cache = {}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ObsNormalizer":
        missing = {"mean", "std", "eps"} - set(state)
        if missing:
            raise KeyError(f"normalizer state is missing {sorted(missing)}")
        mean = state["mean"].cpu().numpy() if isinstance(state["mean"], torch.Tensor) else state["mean"]
        std = state["std"].cpu().numpy() if isinstance(state["std"], torch.Tensor) else state["std"]
        return cls(mean, std, float(state["eps"]))

    def __repr__(self) -> str:
        return f"ObsNormalizer(obs_dim={self.obs_dim}, eps={self.eps})"


@dataclass(frozen=True)
class RewardTransform:
    """``r * scale + shift``; build it with :meth:`from_mode`."""

    scale: float = 1.0
    shift: float = 0.0
    mode: str = "none"

    @classmethod
    def from_mode(cls, mode: str | float, transitions: "Transitions | None" = None) -> "RewardTransform":
        """``"none"``, ``"locomotion"`` (needs the dataset), ``"antmaze"``, ``"center"`` (subtract the
        dataset's mean reward, as the ASPC authors' critic target does; needs the dataset), or a number."""
        if isinstance(mode, (int, float)) and not isinstance(mode, bool):
            return cls(float(mode), 0.0, "scale")
        if mode == "none":
            return cls(1.0, 0.0, "none")
        if mode == "antmaze":
            return cls(1.0, -1.0, "antmaze")
        if mode == "center":
            if transitions is None:
                raise ValueError("reward centring 'center' needs the dataset (its mean reward)")
            return cls(1.0, -float(np.mean(transitions.rewards)), "center")
        if mode == "locomotion":
            if transitions is None:
                raise ValueError("reward scaling 'locomotion' needs the dataset (its episode returns)")
            returns = transitions.episode_returns()
            spread = float(returns.max() - returns.min()) if returns.size else 0.0
            if not np.isfinite(spread) or spread <= 0:
                raise ValueError(
                    f"reward scaling 'locomotion' needs episodes with different returns; the dataset has "
                    f"{returns.size} episode(s) with max - min return = {spread}"
                )
            return cls(1000.0 / spread, 0.0, "locomotion")
        raise ValueError(f"unknown reward scaling {mode!r}; choose one of {REWARD_MODES} or a number")

    def __call__(self, rewards: Any) -> Any:
        return rewards * self.scale + self.shift

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "shift": self.shift, "mode": self.mode}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "RewardTransform":
        return cls(float(state["scale"]), float(state["shift"]), str(state.get("mode", "scale")))
