"""Your own data from the command line: --env-id and reference scores on train, eval and report; the
preset line."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from metaconstraint import cli
from tests.pendulum_data import make_dataset
from tests.test_training import TINY_SETS

OWN = ["--steps", 100, "--eval-every", 0, "--quiet", "--set", *TINY_SETS]


def main(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def own_hdf5(tmp_path_factory) -> Path:
    """A D4RL-format HDF5 of Pendulum data whose name is no D4RL name and which names no env or references."""
    data = make_dataset("expert", episodes=3, seed=0, noise=0.5)
    n = len(data["rewards"])
    path = tmp_path_factory.mktemp("own") / "my_robot_log.hdf5"
    with h5py.File(path, "w") as f:
        for k in ("observations", "actions", "rewards", "next_observations", "terminals"):
            f[k] = data[k]
        f["timeouts"] = (np.arange(n) % 200) == 199
    return path


@pytest.fixture(scope="module")
def own_runs(own_hdf5, tmp_path_factory):
    """Two finished runs on own_hdf5: one with reference scores given, one without."""
    root = tmp_path_factory.mktemp("ownruns")
    raw, scored = root / "raw", root / "scored"
    assert cli.main([str(a) for a in ["train", "--dataset", own_hdf5, "--env-id", "Pendulum-v1", "--run-dir", raw, *OWN]]) == 0
    assert cli.main([str(a) for a in ["train", "--dataset", own_hdf5, "--env-id", "Pendulum-v1", "--ref-min-score",
                                      -1200, "--ref-max-score", -150, "--run-dir", scored, *OWN]]) == 0
    return root, raw, scored


def test_without_env_id_the_run_stops_before_training_and_names_the_flag(own_hdf5, tmp_path, capsys):
    code, _, err = main(["train", "--dataset", own_hdf5, "--run-dir", tmp_path / "r", *OWN], capsys)
    assert code == 2 and "--env-id" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_env_id_and_reference_scores_reach_the_run(own_runs):
    _, raw, scored = own_runs
    s_raw = json.loads((raw / "summary.json").read_text())
    s_sc = json.loads((scored / "summary.json").read_text())
    assert s_raw["env_id"] == s_sc["env_id"] == "Pendulum-v1"
    assert s_raw["final_score"] is None and s_raw["final_return"] < 0
    ret = s_sc["final_return"]
    assert s_sc["final_score"] == pytest.approx(100 * (ret + 1200) / (-150 + 1200), rel=1e-12)
    cfg = yaml.safe_load((scored / "config.yaml").read_text())
    assert (cfg["env_id"], cfg["ref_min_score"], cfg["ref_max_score"]) == ("Pendulum-v1", -1200.0, -150.0)


def test_eval_takes_reference_scores_and_env_id(own_runs, capsys):
    _, raw, _ = own_runs
    code, out, _ = main(["eval", "--run-dir", raw, "--episodes", 2, "--json"], capsys)
    plain = json.loads(out)
    assert code == 0 and plain["score_mean"] is None
    code, out, _ = main(["eval", "--run-dir", raw, "--episodes", 2, "--json", "--ref-min-score", -1000,
                         "--ref-max-score", 0, "--env-id", "Pendulum-v1"], capsys)
    res = json.loads(out)
    assert code == 0 and res["returns"] == plain["returns"]
    assert res["score_mean"] == pytest.approx(100 * (plain["return_mean"] + 1000) / 1000, rel=1e-12)
    code, _, err = main(["eval", "--run-dir", raw, "--ref-min-score", 1], capsys)
    assert code == 2 and "--ref-min-score and --ref-max-score go together" in err
    code, _, err = main(["eval", "--run-dir", raw, "--env-id", "MountainCarContinuous-v0"], capsys)
    assert code == 2 and "--env-id MountainCarContinuous-v0" in err and "size 2, the data has 3" in err


def test_report_shows_runs_without_reference_scores_with_raw_returns(own_runs, capsys):
    root, raw, scored = own_runs
    ret = json.loads((raw / "summary.json").read_text())["final_return"]
    code, out, _ = main(["report", raw], capsys)
    assert code == 0 and "left out, " not in out
    row = next(ln for ln in out.splitlines() if "(return, not normalised)" in ln)
    assert row.split("|")[2].strip() == f"{ret:.1f} (n=1)"
    assert "**average**" not in out and "1 in the tables" in out
    # normalised on request, only for the env named
    code, out, _ = main(["report", raw, "--ref-min-score", -1200, "--ref-max-score", -150, "--env-id", "Pendulum-v1"], capsys)
    row = next(ln for ln in out.splitlines() if "my_robot_log" in ln)
    assert "not normalised" not in out and row.split("|")[2].strip() == f"{100 * (ret + 1200) / 1050:.1f} (n=1)"
    code, out, _ = main(["report", raw, "--ref-min-score", -1200, "--ref-max-score", -150, "--env-id", "Hopper-v5"], capsys)
    assert "(return, not normalised)" in out
    code, _, err = main(["report", raw, "--env-id", "Pendulum-v1"], capsys)
    assert code == 2 and "give those too" in err
    # both runs together: the scored run is a separate column (its settings include the references)
    code, out, _ = main(["report", root], capsys)
    assert code == 0 and "2 in the tables" in out


def test_reference_scores_come_in_pairs_and_set_is_accepted(own_hdf5, tmp_path, capsys):
    code, _, err = main(["train", "--dataset", own_hdf5, "--env-id", "Pendulum-v1", "--ref-min-score", -1200,
                         "--run-dir", tmp_path / "r", *OWN], capsys)
    assert code == 2 and "give both (--ref-min-score and --ref-max-score)" in err
    code, _, err = main(["train", "--dataset", own_hdf5, "--set", "ref_min_score=5", "ref_max_score=5",
                         "--run-dir", tmp_path / "r", *OWN], capsys)
    assert code == 2 and "both 5.0" in err
    from metaconstraint.config import resolve

    c = resolve(sets=["ref_min_score=-1", "ref_max_score=2", "env_id=Pendulum-v1"])
    assert (c.ref_min_score, c.ref_max_score, c.env_id) == (-1.0, 2.0, "Pendulum-v1")


def test_the_first_line_says_which_preset_and_why(own_hdf5, tmp_path, capsys, monkeypatch):
    from metaconstraint import training

    monkeypatch.setattr(training.Trainer, "train", lambda self, stop_after=None: (_ for _ in ()).throw(KeyboardInterrupt))
    code, out, _ = main(["train", "--dataset", own_hdf5, "--run-dir", tmp_path / "b"], capsys)
    line = out.splitlines()[0]
    assert line.startswith(f"aspc on {own_hdf5}: preset paper (1,000,000 steps")
    assert "the default for a dataset that is not built in" in line and "--preset quick" in line
    code, out, _ = main(["train", "--run-dir", tmp_path / "c"], capsys)
    assert out.splitlines()[0] == "aspc on pendulum-medium: preset quick (12,000 steps, 64-wide networks): the default for a built-in dataset"
    code, out, _ = main(["train", "--dataset", own_hdf5, "--preset", "quick", "--run-dir", tmp_path / "d"], capsys)
    assert out.splitlines()[0].endswith("preset quick (12,000 steps, 64-wide networks): set by command line")



def test_a_run_written_before_env_id_existed_still_resumes(own_runs, tmp_path, capsys):
    """config.yaml and checkpoints of older versions lack env_id / ref_*: they mean the defaults (None)."""
    import shutil

    from metaconstraint.rundir import latest_checkpoint, load_checkpoint, save_checkpoint

    _, raw, _ = own_runs
    old = tmp_path / "old"
    shutil.copytree(raw, old)
    from metaconstraint.data import load, save_npz

    # an old run: its dataset names its env itself, its config has no env_id / ref_* keys
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    for key in ("env_id", "ref_min_score", "ref_max_score"):
        cfg.pop(key)
    cfg["dataset"] = str(tmp_path / "named.npz")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    path = latest_checkpoint(old)
    state = load_checkpoint(path)
    for key in ("env_id", "ref_min_score", "ref_max_score"):
        state["config"].pop(key)
    state["config"]["dataset"] = cfg["dataset"]
    save_checkpoint(state, path)
    data = load(yaml.safe_load((raw / "config.yaml").read_text())["dataset"], env_id="Pendulum-v1")
    save_npz(data, cfg["dataset"])
    code, out, err = main(["train", "--resume", old], capsys)
    assert code == 0, err
    assert "already finished at step 100" in out


def test_data_info_on_a_builtin_name_an_hdf5_without_env_and_an_npz(own_hdf5, tmp_path, capsys):
    from metaconstraint.data import load, save_npz

    code, out, _ = main(["data", "info", "pendulum-medium"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "pendulum-medium (metaconstraint/pendulum/medium-v0): built-in Minari dataset, 2.3 MB"
    assert lines[1] == "  50,000 transitions in 250 episodes (length 200-200, mean 200.0); 0 terminals, 250 timeouts"
    assert "normalised score 38.9" in lines[3] and "evaluation env: Pendulum-v1" in out
    # own HDF5: no env, no references; the numbers are the data's
    t = load(own_hdf5)
    rets = t.episode_returns()
    code, out, _ = main(["data", "info", own_hdf5, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "D4RL-format HDF5 file" and info["env_id"] is None
    assert (info["transitions"], info["episodes"]) == (len(t), 3) and info["return"]["mean"] == pytest.approx(rets.mean())
    assert info["ref_min_score"] is None and info["normalised_score"] is None
    code, out, _ = main(["data", "info", own_hdf5], capsys)
    assert "evaluation env: none named (give train --env-id" in out and "reference scores: none" in out
    # with an env named on the command line, and an npz carrying references
    code, out, _ = main(["data", "info", own_hdf5, "--env-id", "Pendulum-v1"], capsys)
    assert "evaluation env: Pendulum-v1" in out
    t.env_id, t.ref_min_score, t.ref_max_score = "Pendulum-v1", -1200.0, -150.0
    npz = save_npz(t, tmp_path / "with_refs.npz")
    code, out, _ = main(["data", "info", npz, "--json"], capsys)
    info = json.loads(out)
    assert info["kind"] == "npz file" and info["normalised_score"] == pytest.approx(100 * (rets.mean() + 1200) / 1050)
    code, _, err = main(["data", "info", tmp_path / "nothing.npz"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = main(["data"], capsys)
    assert code == 2 and "data info ID_OR_PATH" in err


def test_transitions_repr_is_one_short_line(own_hdf5):
    from metaconstraint.data import load

    t = load(own_hdf5, env_id="Pendulum-v1")
    text = repr(t)
    assert text == f"Transitions({str(own_hdf5)!r}: 600 transitions, 3 episodes, obs_dim 3, act_dim 1, env Pendulum-v1)"
    assert "\n" not in text and str(t) == text
