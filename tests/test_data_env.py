"""A tiny deterministic env for the data and evaluation tests (registered on import), and its checks.

``Reach``: a point on a line starts at ``x0 ~ U(-2, 2)``; the action ``a`` in ``[-1, 1]`` moves
it by ``0.5 a``; the reward is ``-|x|``; the episode terminates when ``|x| > 4`` and is
truncated after 20 steps. TD3 learns it in a few hundred updates.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "mctest/Reach-v0"
HORIZON = 20


class ReachEnv(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = 0.0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.x, self.t / HORIZON], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-2.0, 2.0))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        self.x += 0.5 * a
        self.t += 1
        return self._obs(), -abs(self.x), abs(self.x) > 4.0, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="tests.test_data_env:ReachEnv", max_episode_steps=HORIZON)


def greedy_policy(obs: np.ndarray) -> np.ndarray:
    """Moves towards 0 as fast as allowed (a good policy on raw observations)."""
    return np.clip(-2.0 * obs[:, :1], -1.0, 1.0).astype(np.float32)


def rightward_policy(obs: np.ndarray) -> np.ndarray:
    """Always +1: terminates once x > 4 (tests terminal handling)."""
    return np.ones((len(obs), 1), np.float32)


def greedy_return(x0: float) -> float:
    """Exact return of :func:`greedy_policy` from ``x0`` over the 20-step horizon (float32 state)."""
    x, total = float(x0), 0.0
    for t in range(HORIZON):
        a = float(np.clip(-2.0 * np.float32(x), -1.0, 1.0))
        x += 0.5 * a
        total += -abs(x)
    return total


def test_reach_env_truncates_after_horizon_and_terminates_when_far():
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=3)
    steps, trunc = 0, False
    while not trunc:
        obs, r, term, trunc, _ = env.step(np.zeros(1, np.float32))
        assert not term
        steps += 1
    assert steps == HORIZON
    env.reset(seed=3)
    for k in range(HORIZON):
        _, _, term, trunc, _ = env.step(np.ones(1, np.float32))
        if term:
            break
    assert term and not trunc and k < 13  # x0 <= 2, +0.5 per step: past 4 within 13 steps


def test_greedy_return_matches_rollout():
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=11)
    x0, total, done = float(obs[0]), 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(greedy_policy(obs[None])[0])
        total += r
        done = term or trunc
    assert abs(total - greedy_return(x0)) < 1e-4  # x0 is seen through a float32 observation
