"""Normaliser, reward scaling and the device sampler (determinism, exact resume, batch contents)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from metaconstraint import data
from metaconstraint.batch import Batch
from metaconstraint.data import ObsNormalizer, RewardTransform, Sampler


def indexed_dataset(n_eps: int = 5, ep_len: int = 8) -> data.Transitions:
    """observations[i] = [i, 2i, episode] so a batch row tells which transition it came from."""
    n = n_eps * ep_len
    i = np.arange(n, dtype=np.float32)
    obs = np.stack([i, 2 * i, i // ep_len], axis=1)
    nobs = np.stack([i + 1, 2 * (i + 1), i // ep_len], axis=1)
    ends = (np.arange(n) % ep_len) == ep_len - 1
    return data.from_arrays(dict(
        observations=obs, next_observations=nobs, actions=(i / n)[:, None], rewards=(i // ep_len) * 10.0 + 1.0,
        terminals=ends & (i // ep_len % 2 == 0), timeouts=ends & (i // ep_len % 2 == 1),
    ))


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_normalizer_statistics_eps_and_numpy_torch_agreement():
    t = indexed_dataset()
    norm = ObsNormalizer.from_transitions(t)
    np.testing.assert_allclose(norm.mean, t.observations.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.std, t.observations.std(0), rtol=1e-5)
    assert norm.eps == 1e-3
    x = t.observations[:7]
    expected = (x - t.observations.mean(0)) / (t.observations.std(0) + 1e-3)
    np.testing.assert_allclose(norm(x), expected, rtol=1e-5)
    np.testing.assert_allclose(norm(torch.from_numpy(x)).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(norm.denormalize(norm(x)), x, rtol=1e-5, atol=1e-5)
    z = norm(t.observations)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    assert (z.std(0) < 1).all() and (z.std(0) > 0.99).all()  # std / (std + eps)
    const = ObsNormalizer.from_transitions(data.from_arrays(dict(
        observations=np.ones((4, 2), np.float32), next_observations=np.ones((4, 2), np.float32),
        actions=np.zeros((4, 1), np.float32), rewards=np.zeros(4, np.float32), terminals=np.zeros(4),
        timeouts=np.array([0, 0, 0, 1]))))
    np.testing.assert_allclose(const(np.ones((1, 2))), 0.0)  # a constant feature: eps keeps it finite
    restored = ObsNormalizer.from_state_dict(roundtrip(norm.state_dict()))
    np.testing.assert_array_equal(restored(x), norm(x))
    with pytest.raises(ValueError, match="observation has 2 features but the normalizer was fitted on 3"):
        norm(np.zeros((1, 2)))
    np.testing.assert_array_equal(ObsNormalizer.identity(3)(x), x)


def test_reward_transforms():
    t = indexed_dataset()
    rets = t.episode_returns()  # 8 steps of 1, 11, 21, 31, 41
    np.testing.assert_allclose(rets, [8, 88, 168, 248, 328])
    loco = RewardTransform.from_mode("locomotion", t)
    assert loco.scale == pytest.approx(1000.0 / 320.0) and loco.shift == 0
    assert RewardTransform.from_mode("antmaze")(np.array([0.0, 1.0])).tolist() == [-1.0, 0.0]
    assert RewardTransform.from_mode("none")(5.0) == 5.0
    assert RewardTransform.from_mode(0.5)(4.0) == 2.0
    with pytest.raises(ValueError, match="unknown reward scaling 'loco'"):
        RewardTransform.from_mode("loco", t)
    with pytest.raises(ValueError, match="needs the dataset"):
        RewardTransform.from_mode("locomotion")


def test_batch_contents_match_the_dataset_rows():
    t = indexed_dataset()
    norm = ObsNormalizer.from_transitions(t)
    s = Sampler(t, batch_size=64, normalizer=norm, reward_scale="locomotion", seed=3)
    b = s.sample()
    assert isinstance(b, Batch) and b.observations.shape == (64, 3) and b.rewards.shape == (64,)
    assert all(x.dtype == torch.float32 for x in b)
    raw = norm.denormalize(b.observations.numpy())
    idx = np.rint(raw[:, 0]).astype(int)
    np.testing.assert_allclose(b.observations.numpy(), norm(t.observations[idx]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.next_observations.numpy(), norm(t.next_observations[idx]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.actions.numpy()[:, 0], t.actions[idx, 0])
    np.testing.assert_allclose(b.rewards.numpy(), t.rewards[idx] * 1000.0 / 320.0, rtol=1e-6)
    np.testing.assert_array_equal(b.terminals.numpy(), t.terminals[idx].astype(np.float32))
    np.testing.assert_array_equal(b.next_action_mask.numpy(), t.next_action_mask[idx].astype(np.float32))
    np.testing.assert_allclose(b.next_actions.numpy()[:, 0], np.where(t.next_action_mask[idx], t.actions[np.minimum(idx + 1, len(t) - 1), 0], 0))
    assert len(set(idx.tolist())) > 20  # uniform over the 40 rows, not one row repeated


def test_sampler_is_deterministic_and_resumes_exactly():
    t = indexed_dataset()
    a, b = Sampler(t, 16, seed=7), Sampler(t, 16, seed=7)
    for _ in range(3):
        torch.testing.assert_close(a.sample().observations, b.sample().observations)
    c = Sampler(t, 16, seed=8)
    assert not torch.equal(Sampler(t, 16, seed=7).sample().observations, c.sample().observations)

    ref = Sampler(t, 16, seed=1)
    stream = [ref.sample().actions for _ in range(6)]
    first = Sampler(t, 16, seed=1)
    for k in range(3):
        torch.testing.assert_close(first.sample().actions, stream[k])
    state = roundtrip(first.state_dict())
    torch.manual_seed(123)  # the global RNG must not matter
    resumed = Sampler(t, 16, seed=999)  # the seed comes back from the state
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 3
    for k in range(3, 6):
        torch.testing.assert_close(resumed.sample().actions, stream[k])
    other = Sampler(indexed_dataset(n_eps=4), 16)
    with pytest.raises(ValueError, match="saved for a dataset of 40 transitions; this one has 32"):
        other.load_state_dict(state)


def test_sampler_on_the_builtin_dataset_fits_the_batch_contract():
    t = data.load("pendulum-medium")
    s = Sampler(t, 256, normalizer=ObsNormalizer.from_transitions(t), seed=0)
    b = s.sample()
    assert b.observations.shape == (256, 3) and b.actions.shape == (256, 1)
    assert b.terminals.sum() == 0 and 0.9 < b.next_action_mask.mean() < 1.0  # 1 of 200 steps ends an episode
    assert s.observations.device.type == "cpu" and len(s) == 50_000
