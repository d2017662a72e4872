"""evaluate / normalized_score: exact returns for a known policy, policy kinds, seeding, references."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from metaconstraint import data
from metaconstraint.data.policies import RandomPolicy
from metaconstraint.evaluation import evaluate, normalized_score, reference_scores
from metaconstraint.nets import Actor
from tests.test_data_env import ENV_ID, HORIZON, greedy_policy, greedy_return, rightward_policy


def start_states(seed: int, episodes: int) -> list[float]:
    env = gym.make(ENV_ID)
    out = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        out.append(env.unwrapped.x)
    return out


def test_known_policy_gets_its_exact_return_and_score():
    res = evaluate(greedy_policy, ENV_ID, episodes=6, seed=40, ref=(-30.0, 0.0))
    expected = np.array([greedy_return(x0) for x0 in start_states(40, 6)])
    np.testing.assert_allclose(res["returns"], expected, atol=1e-4)
    assert res["lengths"] == [HORIZON] * 6
    assert res["return_mean"] == pytest.approx(expected.mean(), abs=1e-4)
    assert res["score_mean"] == pytest.approx(100 * (expected.mean() + 30.0) / 30.0, abs=1e-3)
    assert res["return_std"] == pytest.approx(expected.std(), abs=1e-4)
    assert (res["ref_min_score"], res["ref_max_score"]) == (-30.0, 0.0) and res["env_id"] == ENV_ID


def test_random_scores_zero_and_greedy_scores_hundred_against_their_own_references():
    low, high = np.array([-1.0], np.float32), np.array([1.0], np.float32)
    rnd = evaluate(RandomPolicy(low, high, seed=5), ENV_ID, episodes=8, seed=0, n_envs=1)
    best = evaluate(greedy_policy, ENV_ID, episodes=8, seed=0)
    ref = (rnd["return_mean"], best["return_mean"])
    assert evaluate(RandomPolicy(low, high, seed=5), ENV_ID, episodes=8, seed=0, n_envs=1, ref=ref)["score_mean"] == pytest.approx(0.0, abs=1e-9)
    assert evaluate(greedy_policy, ENV_ID, episodes=8, seed=0, ref=ref)["score_mean"] == pytest.approx(100.0)


def test_results_do_not_depend_on_the_number_of_parallel_envs():
    one = evaluate(greedy_policy, ENV_ID, episodes=5, seed=3, n_envs=1)
    many = evaluate(greedy_policy, ENV_ID, episodes=5, seed=3, n_envs=4)
    assert one["returns"] == many["returns"] and one["lengths"] == many["lengths"]
    other_seed = evaluate(greedy_policy, ENV_ID, episodes=5, seed=4)
    assert other_seed["returns"] != one["returns"]
    assert one["score_mean"] is None  # no reference scores for a bare env id


def test_a_network_policy_agrees_across_n_envs_to_float32_rounding():
    """A batched float32 forward pass may round differently for another batch size: returns agree to
    ~1e-7 relative (the README's claim), not bit for bit."""
    torch.manual_seed(0)
    actor = Actor(3, 1, 2.0, hidden=(256, 256))
    one = np.asarray(evaluate(actor, "Pendulum-v1", episodes=10, seed=0, n_envs=1)["returns"])
    ten = np.asarray(evaluate(actor, "Pendulum-v1", episodes=10, seed=0, n_envs=10)["returns"])
    rel = np.abs(one - ten).max() / np.abs(one).max()
    assert rel <= 1e-5  # measured 9.8e-7 here; different seeds would differ by ~1e-1


def test_terminating_episodes_are_counted_to_their_end():
    res = evaluate(rightward_policy, ENV_ID, episodes=4, seed=0, n_envs=2)
    for x0, n, r in zip(start_states(0, 4), res["lengths"], res["returns"]):
        steps = int(np.floor((4.0 - x0) / 0.5)) + 1  # first step with x > 4
        assert n == steps
        assert r == pytest.approx(-sum(abs(x0 + 0.5 * k) for k in range(1, steps + 1)), abs=1e-9)


class RecordingAgent:
    """Agent-protocol stand-in: acts on normalised tensors, records what it saw."""

    def __init__(self):
        self.seen = []

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        self.seen.append(obs.clone())
        return -torch.ones(obs.shape[0], 1)


def test_agent_receives_normalised_observations_and_module_policies_work():
    norm = data.ObsNormalizer(np.array([1.0, 0.5]), np.array([2.0, 0.25]))
    agent = RecordingAgent()
    evaluate(agent, ENV_ID, episodes=2, seed=9, normalizer=norm, n_envs=2)
    x0 = start_states(9, 2)
    raw = np.array([[x, 0.0] for x in x0], np.float32)
    torch.testing.assert_close(agent.seen[0], torch.from_numpy(norm(raw)))
    actor = Actor(2, 1, 1.0, hidden=(8,))
    res = evaluate(actor, ENV_ID, episodes=2, seed=9)
    with torch.no_grad():
        a0 = actor(torch.from_numpy(raw)).numpy()
    assert np.isfinite(res["returns"]).all() and np.abs(a0).max() <= 1.0
    with pytest.raises(TypeError, match="policy must be an agent with act"):
        evaluate(42, ENV_ID, episodes=1)


def test_normalized_score_sources():
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("halfcheetah-expert-v2", -280.178953) == pytest.approx(0.0)
    assert normalized_score("walker2d-medium-replay-v2", [1.629008, 4592.3]) == pytest.approx([0.0, 100.0])
    assert normalized_score("ant-random-v2", 3879.7) == pytest.approx(100.0)
    assert normalized_score((-10.0, 10.0), 0.0) == pytest.approx(50.0)
    t = data.load("pendulum-medium")
    lo, hi = t.ref_min_score, t.ref_max_score
    assert reference_scores("pendulum-medium") == (lo, hi) == reference_scores(t)
    assert normalized_score(t, hi) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no reference scores for 'Pendulum-v1'"):
        normalized_score("Pendulum-v1", -200.0)


def test_random_policy_on_the_builtin_dataset_scores_near_zero():
    t = data.load("pendulum-medium")
    res = evaluate(RandomPolicy(t.action_low, t.action_high, seed=1), "pendulum-medium", episodes=10, seed=123)
    assert res["env_id"] == "Pendulum-v1" and res["lengths"] == [200] * 10
    # ref_min_score is the random policy's mean return over 50 episodes: a fresh sample lands near 0
    assert abs(res["score_mean"]) < 15
    same = evaluate(RandomPolicy(t.action_low, t.action_high, seed=1), t, episodes=10, seed=123)
    assert same["returns"] == res["returns"]
