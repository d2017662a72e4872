"""Loading D4RL-style HDF5 / npz / arrays: episode boundaries, next states, done flags, round trips."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from metaconstraint import data
from metaconstraint.data import DataWarning, Transitions
from tests.test_data_env import ENV_ID

# Three episodes, 10 steps: A (4 steps, ends by timeout), B (3 steps, terminal), C (3 steps, cut by the data end).
# Observation rows are [episode, step]; the final observation of A (after its timeout) is [0, 4].
EP_LEN = (4, 3, 3)


def d4rl_arrays(with_next: bool = True) -> dict[str, np.ndarray]:
    obs, nobs, act, rew, term, tout = [], [], [], [], [], []
    for e, n in enumerate(EP_LEN):
        for s in range(n):
            obs.append([e, s])
            nobs.append([e, s + 1])
            act.append([0.1 * e + 0.01 * s])
            rew.append(10 * e + s)
            term.append(e == 1 and s == n - 1)
            tout.append(e == 0 and s == n - 1)
    out = dict(observations=np.array(obs, np.float32), actions=np.array(act, np.float32),
               rewards=np.array(rew, np.float32), terminals=np.array(term), timeouts=np.array(tout))
    if with_next:
        out["next_observations"] = np.array(nobs, np.float32)
    return out


def write_d4rl(path, arrays, **attrs):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def test_d4rl_hdf5_with_timeouts_gives_right_next_states_and_flags(tmp_path):
    t = data.load(write_d4rl(tmp_path / "d.hdf5", d4rl_arrays()))
    assert len(t) == 10 and t.num_episodes == 3
    np.testing.assert_array_equal(t.next_observations[3], [0, 4])  # the true final state of A, not B's first
    np.testing.assert_array_equal(t.terminals, [0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(t.timeouts, [0, 0, 0, 1, 0, 0, 0, 0, 0, 1])  # A's timeout, C cut by the end
    np.testing.assert_array_equal(t.episode_starts, [1, 0, 0, 0, 1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(t.next_action_mask, [1, 1, 1, 0, 1, 1, 0, 1, 1, 0])
    np.testing.assert_allclose(t.next_actions[:3, 0], [0.01, 0.02, 0.03])
    assert (t.next_actions[~t.next_action_mask] == 0).all()
    np.testing.assert_allclose(t.episode_returns(), [0 + 1 + 2 + 3, 10 + 11 + 12, 20 + 21 + 22])
    assert any("cut by the end of the data" in n for n in t.notes)
    # every transition's next state is the following row's state unless an episode ends there
    same_ep = ~t.episode_ends[:-1]
    np.testing.assert_array_equal(t.next_observations[:-1][same_ep], t.observations[1:][same_ep])


def test_without_next_observations_timeout_rows_are_left_out_loudly(tmp_path):
    path = write_d4rl(tmp_path / "d.hdf5", d4rl_arrays(with_next=False))
    with pytest.warns(DataWarning, match=r"2 transition\(s\) that end an episode by timeout .* were left out"):
        t = data.load(path)
    assert len(t) == 8  # A's timeout row and C's last row have no next state
    np.testing.assert_array_equal(t.observations[:, 0], [0, 0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(t.next_observations[2], [0, 3])  # inside A
    np.testing.assert_array_equal(t.next_observations[5], t.observations[5])  # terminal: placeholder, no bootstrap
    np.testing.assert_array_equal(t.terminals, [0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(t.timeouts, [0, 0, 1, 0, 0, 0, 0, 1])  # A now ends at its 3rd step
    np.testing.assert_array_equal(t.episode_starts, [1, 0, 0, 1, 0, 0, 1, 0])
    assert t.next_action_mask[2]  # the action at [0, 3] is known even though that row went
    np.testing.assert_allclose(t.next_actions[2], [0.03])
    assert any("terminal transition(s) have no recorded next observation" in n for n in t.notes)


def test_hidden_episode_boundary_is_detected_from_next_observations():
    arrays = d4rl_arrays()
    arrays["timeouts"][:] = False  # A's timeout flag lost: next_observations[3] = [0, 4] != observations[4]
    t = data.from_arrays(arrays)
    assert t.timeouts[3] and not t.next_action_mask[3] and t.episode_starts[4]
    assert any("treated as episode ends" in n for n in t.notes)
    no_tout = {k: v for k, v in d4rl_arrays().items() if k != "timeouts"}
    assert data.from_arrays(no_tout).timeouts[3]  # timeouts may be omitted when next_observations are given


def test_transitions_round_trip_through_hdf5_and_npz(tmp_path):
    t = data.from_arrays(d4rl_arrays(), env_id=ENV_ID, ref_min_score=-5.0, ref_max_score=7.0)
    for path in (data.save_hdf5(t, tmp_path / "x.hdf5"), data.save_npz(t, tmp_path / "x.npz")):
        u = data.load(path, check_env=False)
        for k, v in t.to_arrays().items():
            np.testing.assert_array_equal(getattr(u, k), v, err_msg=f"{path.suffix} {k}")
        assert u.env_id == ENV_ID and (u.ref_min_score, u.ref_max_score) == (-5.0, 7.0)


def test_fingerprint_names_the_numbers_not_the_file_or_its_metadata(tmp_path):
    """The same transitions through another file format and other metadata keep their hash; one reward or one
    timeout flag changed gives another."""
    t = data.from_arrays(d4rl_arrays(), env_id=ENV_ID, ref_min_score=-5.0, ref_max_score=7.0)
    fp = t.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    u = data.load(data.save_npz(t, tmp_path / "x.npz"), check_env=False)
    u.ref_max_score, u.source = 9.0, "elsewhere"
    assert u.fingerprint() == fp
    u.rewards = u.rewards.copy()
    u.rewards[3] = np.nextafter(u.rewards[3], np.float32(np.inf))  # one float32 step
    assert u.fingerprint() != fp
    v = data.load(tmp_path / "x.npz", check_env=False)
    v.timeouts = v.timeouts.copy()
    v.timeouts[0] = ~v.timeouts[0]
    assert v.fingerprint() != fp


def test_d4rl_file_name_gives_d4rl_reference_scores_and_env(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    arrays = dict(observations=rng.normal(size=(n, 11)).astype(np.float32),
                  actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32), rewards=rng.normal(size=n).astype(np.float32),
                  terminals=np.zeros(n, bool), timeouts=(np.arange(n) % 10 == 9))
    arrays["next_observations"] = np.roll(arrays["observations"], -1, axis=0)
    t = data.load(write_d4rl(tmp_path / "hopper-medium-v2.hdf5", arrays))
    assert (t.ref_min_score, t.ref_max_score) == (-20.272305, 3234.3)
    assert t.env_id == "Hopper-v5" and t.action_space is not None and t.max_action == 1.0
    assert t.num_episodes == 3


def test_select_keeps_invariants():
    t = data.from_arrays(d4rl_arrays())
    keep = np.ones(len(t), bool)
    keep[[1, 5]] = False
    u = t.select(keep)
    u.check()
    np.testing.assert_array_equal(u.observations[:, 0], [0, 0, 0, 1, 1, 2, 2, 2])
    # rows [0, 0] and [1, 0] lost their successors: they now end their episodes (timeouts),
    # and the rows after the gaps ([0, 2] and [1, 2]) start new ones
    np.testing.assert_array_equal(u.timeouts, [1, 0, 1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(u.terminals, [0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(u.episode_starts, [1, 1, 0, 1, 1, 1, 0, 0])
    # the action taken at row 0's next state is still known (row [0, 1] went, its action did not)
    assert u.next_action_mask[0] and u.next_actions[0, 0] == np.float32(0.01)


def test_builtin_dataset_loads_with_reference_scores():
    t = data.load("pendulum-medium")
    assert t.env_id == "Pendulum-v1" and t.obs_dim == 3 and t.act_dim == 1 and t.max_action == 2.0
    assert len(t) == 50_000 and t.num_episodes == 250 and not t.terminals.any()
    assert t.ref_min_score < t.ref_max_score < 0
    score = 100 * (t.episode_returns().mean() - t.ref_min_score) / (t.ref_max_score - t.ref_min_score)
    assert 15 < score < 60  # medium quality
    assert data.describe("pendulum-medium")["dataset_id"] == "metaconstraint/pendulum/medium-v0"


def test_concatenate_rejects_other_shapes():
    a = data.from_arrays(d4rl_arrays())
    b = Transitions.from_arrays({**d4rl_arrays(), "actions": np.zeros((10, 2), np.float32)})
    assert len(data.concatenate([a, a])) == 20
    with pytest.raises(data.DataError, match="cannot concatenate .* act_dim 2"):
        data.concatenate([a, b])
