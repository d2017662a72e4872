"""Behaviour policies on raw (numpy) observations, and the policy checkpoint format.

A *policy* here is any callable mapping a batch of raw observations ``(n, obs_dim)`` to a
batch of environment actions ``(n, act_dim)``. :class:`ActorPolicy` wraps a
:class:`metaconstraint.nets.Actor` trained in the normalised action box ``[-1, 1]`` and
maps its output onto the environment's ``[low, high]``.

Checkpoint format (``torch.save`` of a dict, loadable with ``weights_only=True``)::

    {"format": "metaconstraint.policy/1", "env_id": str, "obs_dim": int, "act_dim": int,
     "hidden": [int, ...], "action_low": [float], "action_high": [float],
     "actor": actor.state_dict(), "normalizer": ObsNormalizer.state_dict() or None,
     "info": {...}}
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..nets import Actor
from .normalization import ObsNormalizer

POLICY_FORMAT = "metaconstraint.policy/1"

Policy = Callable[[np.ndarray], np.ndarray]


class RandomPolicy:
    """Uniform actions in the box ``[low, high]``, from its own seeded generator."""

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int = 0):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        n = np.asarray(obs).shape[0]
        return self.rng.uniform(self.low, self.high, size=(n,) + self.low.shape).astype(np.float32)


class ActorPolicy:
    """A deterministic actor (trained on ``[-1, 1]`` actions) acting on raw observations."""

    def __init__(
        self,
        actor: Actor,
        action_low: Sequence[float],
        action_high: Sequence[float],
        normalizer: ObsNormalizer | None = None,
        env_id: str | None = None,
        info: dict | None = None,
    ):
        self.actor = actor.eval()
        self.low = np.asarray(action_low, dtype=np.float32)
        self.high = np.asarray(action_high, dtype=np.float32)
        self.normalizer = normalizer
        self.env_id = env_id
        self.info = dict(info or {})

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        if self.normalizer is not None:
            x = self.normalizer(x)
        u = self.actor(torch.as_tensor(x)).numpy()
        return from_unit_box(u, self.low, self.high)

    def checkpoint(self) -> dict[str, Any]:
        """The dict :func:`save_policy` writes."""
        hidden = [m.out_features for m in self.actor.net if isinstance(m, torch.nn.Linear)][:-1]
        return {
            "format": POLICY_FORMAT,
            "env_id": self.env_id,
            "obs_dim": int(self.actor.net[0].in_features),
            "act_dim": int(self.low.shape[0]),
            "hidden": hidden,
            "action_low": self.low.tolist(),
            "action_high": self.high.tolist(),
            "actor": {k: v.detach().clone() for k, v in self.actor.state_dict().items()},
            "normalizer": None if self.normalizer is None else self.normalizer.state_dict(),
            "info": self.info,
        }


def to_unit_box(a: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map environment actions in ``[low, high]`` to ``[-1, 1]``."""
    return (2.0 * (a - low) / (high - low) - 1.0).astype(np.float32)


def from_unit_box(u: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map ``[-1, 1]`` actions to the environment's ``[low, high]`` (clipped, float32)."""
    a = low + (np.clip(u, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
    return np.clip(a, low, high).astype(np.float32)


def save_policy(policy: ActorPolicy, path: str | Path) -> Path:
    """Write ``policy`` as a checkpoint file (see the module docstring for the format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(policy.checkpoint(), path)
    return path


def load_policy(spec: str | Path) -> Policy:
    """A policy from a checkpoint file, a file written by ``metaconstraint export``, or ``"package.module:factory"``.

    A checkpoint is the format in this module's docstring; an exported policy is rebuilt from the
    plain data stored in it (:func:`metaconstraint.export.load_policy`). ``module:factory`` imports
    ``factory`` and calls it with no arguments; it must return a callable on raw
    observation batches (this is how other kinds of checkpoints plug in).
    """
    text = str(spec)
    if ":" in text and not Path(text).exists():
        mod_name, _, attr = text.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import policy factory '{text}': {err}") from err
        policy = factory()
        if not callable(policy):
            raise ValueError(f"policy factory '{text}' returned {type(policy).__name__}, not a callable")
        return policy
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"policy checkpoint '{path}' does not exist")
    from ..export import is_exported_policy, load_policy as load_exported

    if is_exported_policy(path):  # written by `metaconstraint export`: rebuilt from its plain data, no code runs
        from ..rundir import RunError

        try:
            return load_exported(path)
        except RunError as err:
            raise ValueError(str(err)) from err
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"cannot read policy checkpoint '{path}': {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != POLICY_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"'{path}' is not a metaconstraint policy checkpoint (format {found!r}, expected "
            f"{POLICY_FORMAT!r}); pass a file written by `metaconstraint export`, or 'module:factory' for other kinds "
            "of policies"
        )
    actor = Actor(ckpt["obs_dim"], ckpt["act_dim"], 1.0, hidden=tuple(ckpt["hidden"]))
    actor.load_state_dict(ckpt["actor"])
    norm = ObsNormalizer.from_state_dict(ckpt["normalizer"]) if ckpt.get("normalizer") else None
    return ActorPolicy(actor, ckpt["action_low"], ckpt["action_high"], norm, ckpt.get("env_id"), ckpt.get("info"))
