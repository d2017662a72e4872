"""Tiny Pendulum-v1 datasets made inside the tests (no files, no project data code)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from metaconstraint.batch import Batch


def energy_controller(obs: np.ndarray) -> np.ndarray:
    """Swing-up by energy pumping, then PD balance at the top (returns about -150 per episode)."""
    cos, sin, vel = obs
    theta = np.arctan2(sin, cos)
    if cos > 0.85:
        u = -(10.0 * theta + 2.0 * vel)
    else:
        energy = 0.5 * vel**2 + 15.0 * cos  # 15 = 3 g / (2 l); upright at rest has energy 15
        u = 2.0 * (15.0 - energy) * np.sign(vel if abs(vel) > 1e-3 else 1.0)
    return np.clip([u], -2.0, 2.0).astype(np.float32)


def make_dataset(kind: str, episodes: int = 10, seed: int = 0, noise: float = 0.1) -> dict[str, np.ndarray]:
    """``kind``: "expert" (controller + Gaussian noise) or "random" (uniform actions)."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    keys = ("observations", "actions", "rewards", "next_observations", "terminals")
    out: dict[str, list] = {k: [] for k in keys}
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        done, ret = False, 0.0
        while not done:
            if kind == "expert":
                act = np.clip(energy_controller(obs) + noise * rng.standard_normal(1), -2, 2).astype(np.float32)
            elif kind == "random":
                act = rng.uniform(-2, 2, size=1).astype(np.float32)
            else:
                raise ValueError(kind)
            nxt, rew, term, trunc, _ = env.step(act)
            for k, v in zip(keys, (obs, act, rew, nxt, term)):
                out[k].append(v)
            ret += rew
            obs, done = nxt, term or trunc
        returns.append(ret)
    data = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    data["returns"] = np.asarray(returns)
    return data


class TinySampler:
    """Uniform batches from a dict of arrays, observations z-normalised (std + 1e-3)."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int, seed: int, dtype=torch.float32):
        mean, std = data["observations"].mean(0), data["observations"].std(0) + 1e-3
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype)  # noqa: E731
        self.obs = t((data["observations"] - mean) / std)
        self.next_obs = t((data["next_observations"] - mean) / std)
        self.act, self.rew, self.term = t(data["actions"]), t(data["rewards"]), t(data["terminals"])
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self) -> Batch:
        i = torch.randint(len(self.obs), (self.batch_size,), generator=self.gen)
        ones = torch.ones(self.batch_size, dtype=self.obs.dtype)
        return Batch(self.obs[i], self.act[i], self.rew[i], self.next_obs[i], self.term[i], self.act[i], ones)
