"""collect writes real Minari datasets: read back by plain minari and by data.load; TD3 behaviours."""

from __future__ import annotations

import argparse
import json

import minari
import numpy as np
import pytest
import torch

from metaconstraint import data
from metaconstraint.data.collect_td3 import TD3Config, replay_until, run_dir, train_behaviours
from metaconstraint.data.collect import collect, main, register
from metaconstraint.data.policies import load_policy
from tests.test_data_env import ENV_ID, HORIZON, greedy_policy

TINY = TD3Config(
    total_steps=600, start_steps=200, hidden=(32, 32), batch_size=32, lr=1e-3, eval_every=100, eval_episodes=3,
    confirm_episodes=4,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def td3_run(tmp_path_factory):
    """One tiny TD3 run shared by the behaviour tests."""
    root = tmp_path_factory.mktemp("behaviours")
    torch.set_num_threads(1)
    summary = train_behaviours(ENV_ID, TINY, seed=0, out_dir=run_dir(root, ENV_ID, 0, TINY), ref_episodes=5, progress=False,
                               log=lambda s: None)
    return root, summary


def test_random_dataset_is_read_back_by_plain_minari(tmp_path, monkeypatch):
    res = collect(ENV_ID, "random", steps=150, seed=1, ref_min_score=-30.0, ref_max_score=-2.0, datasets_path=tmp_path,
                  progress=False)
    assert res.steps == 150 and res.dataset_id == "metaconstraint/reach/random-v0"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = minari.load_dataset("metaconstraint/reach/random-v0", download=False)
    eps = list(ds.iterate_episodes())
    # 20-step truncated episodes, unless the random walk leaves |x| <= 4 first; the last one is cut at 150 steps
    assert ds.total_steps == 150 and sum(len(e) for e in eps) == 150
    assert len(eps) == ds.total_episodes == res.episodes >= 150 // HORIZON
    for e in eps:
        assert e.observations.shape == (len(e) + 1, 2) and e.actions.shape == (len(e), 1)
        assert e.terminations[-1] or e.truncations[-1]
        assert not (e.terminations[:-1] | e.truncations[:-1]).any()
        assert np.all(np.abs(e.actions) <= 1.0)
    assert ds.storage.metadata["ref_min_score"] == -30.0 and ds.storage.metadata["ref_max_score"] == -2.0
    assert ds.env_spec.id == ENV_ID

    t = data.load("metaconstraint/reach/random-v0")
    assert len(t) == 150 and t.num_episodes == len(eps)
    assert t.env_id == ENV_ID and (t.ref_min_score, t.ref_max_score) == (-30.0, -2.0)
    np.testing.assert_array_equal(t.actions, np.concatenate([e.actions for e in eps]))
    np.testing.assert_array_equal(t.next_observations, np.concatenate([e.observations[1:] for e in eps]))
    np.testing.assert_allclose(t.episode_returns(), [e.rewards.sum() for e in eps], rtol=1e-5)
    # also by folder path
    assert len(data.load(tmp_path / "metaconstraint/reach/random-v0")) == 150


def test_collect_is_reproducible_and_refuses_to_overwrite(tmp_path):
    a = collect(ENV_ID, "random", steps=60, seed=4, ref_scores=False, datasets_path=tmp_path / "a", progress=False,
                noise=0.3)
    b = collect(ENV_ID, "random", steps=60, seed=4, ref_scores=False, datasets_path=tmp_path / "b", progress=False,
                noise=0.3)
    assert a.dataset_id == "metaconstraint/reach/random-noise30-v0"
    ta, tb = data.load(a.path), data.load(b.path)
    for k in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(ta, k), getattr(tb, k))
    c = collect(ENV_ID, "random", steps=60, seed=5, ref_scores=False, datasets_path=tmp_path / "c", progress=False)
    assert not np.array_equal(data.load(c.path).actions, ta.actions)
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        collect(ENV_ID, "random", steps=60, seed=4, ref_scores=False, datasets_path=tmp_path / "a", progress=False, noise=0.3)
    again = collect(ENV_ID, "random", steps=30, seed=4, ref_scores=False, datasets_path=tmp_path / "a", progress=False,
                    noise=0.3, overwrite=True)
    assert len(data.load(again.path)) == 30


def test_td3_behaviours_rank_and_trainer_is_reproducible(td3_run, tmp_path):
    root, s = td3_run
    assert s["expert"]["return"] > s["random_return"] + 5  # learnt something real
    assert s["medium"]["step"] <= s["expert"]["step"]
    assert s["random_return"] < s["medium"]["return"] < s["expert"]["return"]
    curve_steps = [c["step"] for c in s["curve"]]
    assert curve_steps == list(range(100, TINY.total_steps + 1, 100))
    again = train_behaviours(ENV_ID, TINY, seed=0, out_dir=tmp_path / "again", ref_episodes=5, progress=False,
                             log=lambda s: None)
    assert [c["eval_return"] for c in again["curve"]] == [c["eval_return"] for c in s["curve"]]
    run = run_dir(root, ENV_ID, 0, TINY)
    expert = load_policy(run / "expert.pt")
    obs = np.array([[1.5, 0.0], [-1.5, 0.0]], np.float32)
    assert expert(obs)[0, 0] < 0 < expert(obs)[1, 0]  # moves towards 0 from both sides


def test_medium_expert_replay_datasets(td3_run, tmp_path):
    root, s = td3_run
    kw = dict(td3=TINY, behaviour_dir=root, ref_episodes=5, datasets_path=tmp_path, progress=False, seed=0)
    med = collect(ENV_ID, "medium", steps=100, **kw)
    exp = collect(ENV_ID, "expert", steps=100, **kw)
    mix = collect(ENV_ID, "medium-expert", steps=100, **kw)
    rep = collect(ENV_ID, "medium-replay", steps=100, **kw)
    for r in (med, exp, mix, rep):
        assert (r.ref_min_score, r.ref_max_score) == (s["random_return"], s["expert"]["return"])
    tm, te, tx, tr = (data.load(r.path) for r in (med, exp, mix, rep))
    # medium-expert is exactly the medium and the expert datasets joined
    joined = data.concatenate([tm, te])
    for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "next_actions"):
        np.testing.assert_array_equal(getattr(tx, k), getattr(joined, k))
    assert tm.episode_returns().mean() < te.episode_returns().mean()
    # medium-replay is the trainer's buffer up to the medium point, re-executed by the DataCollector
    buf = replay_until(run_dir(root, ENV_ID, 0, TINY), s["medium"]["step"])
    assert len(tr) == s["medium"]["step"] == rep.steps
    np.testing.assert_array_equal(tr.actions, buf["actions"])
    np.testing.assert_allclose(tr.next_observations, buf["next_observations"], rtol=1e-6)
    np.testing.assert_array_equal(tr.terminals, buf["terminations"])


def test_policy_behaviour_and_expert_policy_reference(td3_run, tmp_path):
    root, s = td3_run
    ckpt = run_dir(root, ENV_ID, 0, TINY) / "expert.pt"
    res = collect(ENV_ID, "policy", policy=str(ckpt), steps=40, ref_episodes=5, expert_policy=str(ckpt),
                  datasets_path=tmp_path, progress=False)
    assert res.ref_max_score == pytest.approx(s["expert"]["return"])  # same episodes, same policy
    with pytest.raises(ValueError, match=r"needs --policy \(policy=\)"):
        collect(ENV_ID, "policy", steps=10, datasets_path=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown behaviour 'expertt'"):
        collect(ENV_ID, "expertt", steps=10, datasets_path=tmp_path, progress=False)


def test_policy_factory_spec_and_bad_checkpoint(tmp_path):
    pol = load_policy("tests.test_data_collect:_greedy_factory")
    np.testing.assert_array_equal(pol(np.array([[1.0, 0.0]], np.float32)), [[-1.0]])
    with pytest.raises(ValueError, match="returned ReachEnv, not a callable"):
        load_policy("tests.test_data_env:ReachEnv")  # a factory that does not return a policy
    with pytest.raises(ValueError, match="cannot import policy factory"):
        load_policy("tests.no_such_module:f")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a metaconstraint policy checkpoint"):
        load_policy(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")


def test_cli_main_and_register(tmp_path, capsys):
    rc = main([ENV_ID, "--behaviour", "random", "--steps", "45", "--no-ref-scores", "--no-progress",
               "--datasets-path", str(tmp_path), "--dataset-id", "cli/reach-random-v0", "--json"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["steps"] == 45 and line["dataset_id"] == "cli/reach-random-v0" and line["ref_min_score"] is None
    assert len(data.load(tmp_path / "cli/reach-random-v0")) == 45
    rc = main([ENV_ID, "--steps", "45", "--no-ref-scores", "--no-progress", "--datasets-path", str(tmp_path),
               "--dataset-id", "cli/reach-random-v0"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    parser = argparse.ArgumentParser(prog="metaconstraint")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["collect", ENV_ID, "-b", "random", "medium", "--td3-steps", "500"])
    assert args.command == "collect" and args.behaviour == ["random", "medium"] and args.td3_steps == 500
    assert callable(args.func)


def test_greedy_policy_collect_has_no_terminals_and_loads_with_timeouts(tmp_path):
    res = collect(ENV_ID, "policy", policy="tests.test_data_collect:_greedy_factory", steps=50, ref_scores=False,
                  datasets_path=tmp_path, progress=False)
    t = data.load(res.path)
    assert t.num_episodes == 3 and list(t.episode_lengths()) == [20, 20, 10]
    assert not t.terminals.any() and t.timeouts.sum() == 3


def _greedy_factory():
    return greedy_policy


def test_random_trains_nothing_unless_asked_and_says_how_to_get_references(tmp_path, capsys, monkeypatch):
    import metaconstraint.data.collect as collect_mod

    def no_training(*a, **k):
        raise AssertionError("random data must not train TD3")

    monkeypatch.setattr(collect_mod, "train_behaviours", no_training)
    rc = main([ENV_ID, "--steps", "60", "--no-progress", "--datasets-path", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("wrote metaconstraint/reach/random-v0: 60 steps, ") and "mean episode return" in lines[0]
    assert lines[1] == f"  folder: {tmp_path / 'metaconstraint/reach/random-v0'}"
    assert "none stored" in lines[2] and "--measure-ref-scores" in lines[2] and "--ref-max-score" in lines[2]
    assert lines[-1].startswith(f"next: MINARI_DATASETS_PATH={tmp_path} metaconstraint data info metaconstraint/reach/random-v0")
    t = data.load(tmp_path / "metaconstraint/reach/random-v0")
    assert len(t) == 60 and t.ref_min_score is None and t.ref_max_score is None
    # given references are stored, still without training
    rc = main([ENV_ID, "--steps", "60", "--no-progress", "--datasets-path", str(tmp_path), "--dataset-id", "x/reach/r-v0",
               "--ref-min-score", "-30", "--ref-max-score", "-2"])
    out = capsys.readouterr().out
    assert rc == 0 and "ref_min_score -30.0 (given), ref_max_score -2.0 (given)" in out
    assert "(normalised score " in out.splitlines()[0]
    # asked to measure: then (and only then) the trainer runs
    monkeypatch.setattr(collect_mod, "train_behaviours", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("trained")))
    rc = main([ENV_ID, "--steps", "60", "--no-progress", "--datasets-path", str(tmp_path), "--dataset-id", "x/reach/m-v0",
               "--measure-ref-scores"])
    assert rc == 2 and "trained" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "0"], "--steps"),
    (["--noise", "-1"], "--noise"),
    (["--ref-episodes", "0"], "--ref-episodes"),
    (["--td3-steps", "0"], "--td3-steps"),
    (["--td3-start-steps", "900", "--td3-steps", "500"], "--td3-start-steps (900) must be below --td3-steps (500)"),
    (["--td3-hidden", "a,b"], "--td3-hidden"),
    (["--medium-band", "0.6,0.5"], "--medium-band"),
    (["--td3-reference", "5,1"], "--td3-reference"),
    (["--behaviour", "policy"], "--behaviour policy needs --policy"),
    (["--ref-min-score", "-3"], "--ref-min-score alone"),
    (["--ref-max-score", "1", "--expert-policy", "x.pt"], "--ref-max-score or --expert-policy, not both"),
])
def test_collect_errors_name_the_flag(argv, flag, tmp_path, capsys):
    rc = main([ENV_ID, "--no-progress", "--datasets-path", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written
