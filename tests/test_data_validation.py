"""Every bad input stops with a message naming the field and the index (or is repaired, counted)."""

from __future__ import annotations

import numpy as np
import pytest

from metaconstraint import data
from metaconstraint.data import DataError, DataWarning
from tests.test_data_env import ENV_ID
from tests.test_data_load import d4rl_arrays, write_d4rl


def arrays(**changes):
    a = d4rl_arrays()
    a.update(changes)
    return a


def test_nan_in_observations_names_field_index_episode_and_step():
    obs = d4rl_arrays()["observations"].copy()
    obs[5, 1] = np.nan
    with pytest.raises(DataError, match=r"field 'observations' has a non-finite value at index 5 \(episode 1, step 1\)"):
        data.load(arrays(observations=obs))


def test_inf_reward_is_reported_and_can_be_dropped_with_a_count():
    rew = d4rl_arrays()["rewards"].copy()
    rew[[2, 8]] = [np.inf, -np.inf]
    with pytest.raises(DataError, match=r"field 'rewards' has a non-finite value at index 2 .*2 transition\(s\) with NaN/Inf"):
        data.load(arrays(rewards=rew))
    with pytest.warns(DataWarning, match=r"dropped 2 of 10 transitions with NaN/Inf \(rewards: 2\)"):
        t = data.load(arrays(rewards=rew), nonfinite="drop")
    assert len(t) == 8 and np.isfinite(t.rewards).all()
    t.check()


def test_nan_action_also_undefines_the_previous_next_action():
    act = d4rl_arrays()["actions"].copy()
    act[1] = np.nan
    with pytest.raises(DataError, match=r"field 'actions' has a non-finite value at index 1 \(episode 0, step 1\)"):
        data.load(arrays(actions=act))
    with pytest.warns(DataWarning, match=r"dropped 1 of 10 .*1 next action\(s\) became undefined"):
        t = data.load(arrays(actions=act), nonfinite="drop")
    assert not t.next_action_mask[0] and np.isfinite(t.next_actions).all()


def test_nan_in_next_observations():
    nobs = d4rl_arrays()["next_observations"].copy()
    nobs[9, 0] = np.nan
    with pytest.raises(DataError, match=r"field 'next_observations' has a non-finite value at index 9 \(episode 2, step 2\)"):
        data.load(arrays(next_observations=nobs))


def test_actions_outside_the_action_space_raise_clip_or_drop():
    act = d4rl_arrays()["actions"].copy()
    act[7, 0] = 1.5
    with pytest.raises(DataError, match=r"field 'actions' is outside the action space at index 7 \(episode 2, step 0\), "
                                        r"dimension 0: 1\.5 not in \[-1\.0, 1\.0\]"):
        data.load(arrays(actions=act), env_id=ENV_ID)
    with pytest.warns(DataWarning, match=r"clipped the actions of 1 of 10 transitions"):
        t = data.load(arrays(actions=act), env_id=ENV_ID, out_of_bounds="clip")
    assert t.actions[7, 0] == 1.0 and t.next_actions[6, 0] == 0.0  # row 6 is terminal: no next action
    with pytest.warns(DataWarning, match=r"dropped 1 of 10 transitions with actions outside"):
        t = data.load(arrays(actions=act), env_id=ENV_ID, out_of_bounds="drop")
    assert len(t) == 9 and t.actions.max() <= 1.0
    ok = d4rl_arrays()["actions"].copy()
    ok[7, 0] = 1.0 + 1e-7  # float rounding at the bound is not an error
    assert len(data.load(arrays(actions=ok), env_id=ENV_ID)) == 10


def test_observation_size_must_match_the_evaluation_env():
    a = d4rl_arrays()
    three = {**a, "observations": np.pad(a["observations"], ((0, 0), (0, 1))),
             "next_observations": np.pad(a["next_observations"], ((0, 0), (0, 1)))}
    with pytest.raises(DataError, match=r"field 'observations' has 3 features but the evaluation env mctest/Reach-v0 observes 2"):
        data.load(three, env_id=ENV_ID)
    two_act = {**a, "actions": np.zeros((10, 2), np.float32)}
    with pytest.raises(DataError, match=r"field 'actions' has 2 dimensions but the evaluation env mctest/Reach-v0 takes 1"):
        data.load(two_act, env_id=ENV_ID)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rewards": None}, r"missing key\(s\) \['rewards'\]"),
        ({"rewards": np.zeros(9, np.float32)}, r"field 'rewards' has 9 rows but 'observations' has 10"),
        ({"actions": np.zeros((10, 1, 1), np.float32)}, r"field 'actions' has shape \(10, 1, 1\); expected \(N, dim\)"),
        ({"rewards": np.zeros((10, 2), np.float32)}, r"field 'rewards' has shape \(10, 2\); expected \(N,\)"),
        ({"terminals": np.full(10, 2)}, r"field 'terminals' must be 0/1 but has 2 at index 0"),
        ({"next_observations": np.zeros((10, 5), np.float32)}, r"field 'next_observations' has 5 columns but 'observations' has 2"),
        ({"observations": np.array(["a"] * 10)}, r"field 'observations' has dtype <U1; expected numbers"),
    ],
)
def test_bad_shapes_and_keys(change, message):
    a = d4rl_arrays()
    a.update(change)
    if change.get("rewards", 1) is None:
        del a["rewards"]
    with pytest.raises(DataError, match=message):
        data.load(a)


def test_missing_timeouts_without_next_observations():
    a = d4rl_arrays(with_next=False)
    del a["timeouts"]
    with pytest.raises(DataError, match=r"missing key\(s\) \['timeouts'\]"):
        data.load(a)


def test_empty_dataset(tmp_path):
    empty = {k: v[:0] for k, v in d4rl_arrays().items()}
    with pytest.raises(DataError, match=r"the dataset is empty \(0 transitions\)"):
        data.load(empty)
    with pytest.raises(DataError, match=r"is empty"):
        data.load(write_d4rl(tmp_path / "empty.hdf5", empty))


def test_hdf5_without_d4rl_keys(tmp_path):
    path = write_d4rl(tmp_path / "other.hdf5", {"foo": np.zeros(3)})
    with pytest.raises(DataError, match=r"no D4RL keys at the top level \(found: \['foo'\]\)"):
        data.load(path)


def test_unreadable_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DataError, match=r"cannot read '.*junk.hdf5' as HDF5 \(truncated, or not an HDF5 file\)"):
        data.load(junk)
    big = {k: np.repeat(v, 2000, axis=0) for k, v in d4rl_arrays().items()}
    good = write_d4rl(tmp_path / "good.hdf5", big)
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.hdf5.*(truncated|cannot read)"):
        data.load(cut)
    npz = data.save_npz(data.from_arrays(big), tmp_path / "good.npz")
    cut_npz = tmp_path / "cut.npz"
    cut_npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cannot read '.*cut.npz' as .npz"):
        data.load(cut_npz)


def test_truncated_minari_file(tmp_path):
    from metaconstraint.data.collect import collect

    res = collect(ENV_ID, "random", steps=400, seed=0, ref_scores=False, datasets_path=tmp_path, progress=False)
    main = tmp_path / res.dataset_id / "data" / "main_data.hdf5"
    main.write_bytes(main.read_bytes()[: main.stat().st_size // 2])
    with pytest.raises(DataError, match=r"(cannot read the Minari dataset|cannot read episode|truncated)"):
        data.load(tmp_path / res.dataset_id)


def test_unknown_names_and_missing_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DataError, match=r"no dataset 'nope/thing-v0': it is not a built-in name \(pendulum-medium\).*"
                                        r"local Minari datasets: none"):
        data.load("nope/thing-v0")
    with pytest.raises(DataError, match=r"dataset file '.*missing.hdf5' does not exist"):
        data.load(tmp_path / "missing.hdf5")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"is not a Minari dataset folder: no metadata.json"):
        data.load(tmp_path / "plain")
    with pytest.raises(TypeError, match="cannot load a dataset from int"):
        data.load(3)
