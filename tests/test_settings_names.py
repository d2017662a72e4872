"""One spelling for a learned coefficient's settings (issue 18): the ``constraint`` block of ``aspc`` and every
``*-adaptive`` algorithm, named like :class:`ConstraintSettings`; configs, sweep specs, run directories and
checkpoints written with the old names (``alpha_lr``, ``coef_lr``, a bare ``horizon``, ...) still load, with one
notice per old name, plan the same run directories and resume exactly."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from metaconstraint import algos
from metaconstraint.config import RENAMED_AGENT_SETTINGS, ConfigError, RenamedSettingWarning, resolve
from metaconstraint.constraint import AdaptiveConstraintConfig, ConstraintSettings
from metaconstraint.sweep import _check_existing, load_spec, plan
from metaconstraint.rundir import list_checkpoints, load_checkpoint, save_checkpoint
from metaconstraint.training import Trainer
from tests.test_training import flat_tensors, metric_rows, run, write_tiny_npz

ROOT = Path(__file__).resolve().parent.parent
LEARNED = ("aspc", "iql-adaptive", "cql-adaptive", "rebrac-adaptive")
OLD_PREFIX = {"aspc": "alpha", "iql-adaptive": "coef", "cql-adaptive": "coef", "rebrac-adaptive": "coef"}


def old_layout(config: dict) -> dict:
    """A resolved run config (``RunConfig.to_dict()``) as the code before issue 18 wrote it: the constraint
    block's settings beside the algorithm's own, ASPC's as ``alpha_*``, the adaptive variants' as ``coef_*``,
    without the two implicit-solver settings (whose defaults the old code used)."""
    out = dict(config, agent=dict(config["agent"]))
    block = out["agent"].pop("constraint")
    prefix = OLD_PREFIX[config["algo"]]
    out["agent"].update({f"{prefix}_every": block["every"], f"{prefix}_lr": block["lr"],
                         f"{prefix}_lr_decay_to": block["lr_decay_to"]})
    out["agent"].update({k: block[k] for k in ("terms", "delta_q", "ema_decay", "horizon", "method")})
    assert block["implicit_iters"] == 10 and block["implicit_lr"] == 1e-2
    return out


def renamed(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RenamedSettingWarning)]


def test_every_learned_coefficient_has_the_constraint_block_and_no_other_spelling():
    block = [f.name for f in dataclasses.fields(ConstraintSettings)]
    assert [f.name for f in dataclasses.fields(AdaptiveConstraintConfig)] == [*block, "init"]
    for name in LEARNED:
        fields = {f.name: f for f in dataclasses.fields(algos.ALGORITHMS[name].Config)}
        assert isinstance(algos.config_for(name).constraint, ConstraintSettings), name
        assert not set(fields) & (set(RENAMED_AGENT_SETTINGS) | set(block)), name
        agent = algos.make(name, 3, 1, constraint={"lr": 0.07, "every": 3, "horizon": 2})
        assert agent.constraint.config.lr == 0.07 and agent.constraint.config.every == 3
        assert agent.constraint.config.horizon == 2
    for name in ("td3bc", "iql", "cql", "rebrac", "wpc", "a2pr"):
        assert "constraint" not in {f.name for f in dataclasses.fields(algos.ALGORITHMS[name].Config)}, name
    with pytest.raises(TypeError, match="constraint must be ConstraintSettings"):
        algos.make("aspc", 3, 1, constraint=0.1)
    with pytest.raises(ValueError, match="horizon"):
        algos.config_for("iql-adaptive", constraint={"method": "implicit", "horizon": 3}).validate()


@pytest.mark.parametrize("algo", LEARNED)
def test_old_names_load_as_the_new_ones_with_one_notice_per_old_name(algo):
    p = OLD_PREFIX[algo]
    new = resolve(flags={"algo": algo}, sets=["constraint.lr=0.04", "constraint.every=5", "constraint.horizon=3",
                                              "agent.constraint.terms=L1+L2", "constraint.lr_decay_to=0.5"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        old = resolve(flags={"algo": algo}, sets=[f"{p}_lr=0.04", f"agent.{p}_every=5", "horizon=3", "agent.terms=L1+L2"],
                      data={"agent": {f"{p}_lr_decay_to": 0.5}})
        resolve(flags={"algo": algo}, sets=[f"{p}_lr=0.04"])  # the same old name again: no second notice
    assert old.agent == new.agent and old.to_dict() == new.to_dict()
    assert sorted(renamed(caught)) == sorted(
        f"setting agent.{o} is now called agent.constraint.{n} (the old name still loads; write the new one)"
        for o, n in ((f"{p}_lr", "lr"), (f"{p}_every", "every"), ("horizon", "horizon"), ("terms", "terms"),
                     (f"{p}_lr_decay_to", "lr_decay_to")))


def test_an_old_name_beside_its_new_one_or_on_an_algorithm_without_the_block_is_refused():
    with pytest.raises(ConfigError, match=r"gives both agent.alpha_lr and agent.constraint.lr"):
        resolve(data={"agent": {"alpha_lr": 0.1, "constraint": {"lr": 0.2}}})
    with pytest.raises(ConfigError, match="unknown setting 'agent.alpha_lr'"):
        resolve(flags={"algo": "td3bc"}, sets=["agent.alpha_lr=0.1"])


def test_the_command_line_prints_one_note_line_per_old_name_and_its_help_the_new_spelling(tmp_path):
    spec = tmp_path / "old.yaml"
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), "grids": [
        {"algo": ["aspc"], "alpha_lr": [0.1, 0.2], "horizon": 2, "seed": "0-2"}]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "metaconstraint", "sweep", str(spec), "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "note: setting agent.alpha_lr is now called agent.constraint.lr (the old name still loads; write the new one)",
        "note: setting agent.horizon is now called agent.constraint.horizon (the old name still loads; write the new one)",
    ]  # 6 runs planned, each old name noted once
    assert "6 runs planned" in proc.stdout and "aspc-alpha_lr=0.1-pendulum-medium-s0" in proc.stdout
    helptext = subprocess.run([sys.executable, "-m", "metaconstraint", "train", "--help"], capture_output=True,
                              text=True, env=env, timeout=300).stdout
    assert "constraint.lr=" in helptext and "alpha_lr" not in helptext and "alpha_every" not in helptext


@pytest.mark.parametrize("spec", ["alpha_confirm.yaml", "alpha_study.yaml", "suite.yaml"])
def test_a_committed_spec_spelled_the_old_way_plans_the_same_runs(spec, tmp_path):
    text = (ROOT / "experiments" / spec).read_text()
    data = load_spec(ROOT / "experiments" / spec)
    keys = {*(data.get("settings") or {}), *(k for g in data["grids"] for k in g),
            *(k for g in data["grids"] for c in g.get("configs", []) for k in c)}
    assert keys and not keys & set(RENAMED_AGENT_SETTINGS)  # the committed specs use the new names
    old_text = text.replace("constraint.lr:", "alpha_lr:")
    for key in ("horizon", "method", "terms", "delta_q"):
        old_text = old_text.replace(f"constraint.{key}:", f"{key}:")
    assert old_text != text
    (tmp_path / spec).write_text(old_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RenamedSettingWarning)
        old = plan(load_spec(tmp_path / spec), tmp_path / "runs")
    new = plan(load_spec(ROOT / "experiments" / spec), tmp_path / "runs")
    assert [r.run_dir for r in old] == [r.run_dir for r in new] and [r.config for r in old] == [r.config for r in new]


def test_an_unnamed_old_spec_keeps_its_folder_names_and_finds_its_old_run_directories(tmp_path):
    old_grid = {"out": str(tmp_path), "grids": [{"algo": ["aspc"], "alpha_lr": [0.1, 0.25]}]}
    new_grid = {"out": str(tmp_path), "grids": [{"algo": ["aspc"], "constraint.lr": [0.1, 0.25]}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RenamedSettingWarning)
        old = plan(old_grid)
    new = plan(new_grid)
    assert [r.name for r in old] == ["aspc-alpha_lr=0.1/aspc-alpha_lr=0.1-pendulum-medium-s0",
                                     "aspc-alpha_lr=0.25/aspc-alpha_lr=0.25-pendulum-medium-s0"]
    assert [r.name for r in new] == ["aspc-constraint.lr=0.1/aspc-constraint.lr=0.1-pendulum-medium-s0",
                                     "aspc-constraint.lr=0.25/aspc-constraint.lr=0.25-pendulum-medium-s0"]
    assert [r.config for r in old] == [r.config for r in new]
    for r in old:  # run directories written before the rename: their config.yaml has the old names
        r.run_dir.mkdir(parents=True)
        (r.run_dir / "config.yaml").write_text(yaml.safe_dump(old_layout(r.config)))
    _check_existing(old)  # the same settings: accepted (the sweep resumes them)
    (old[0].run_dir / "config.yaml").write_text(yaml.safe_dump(old_layout(old[1].config)))
    with pytest.raises(ConfigError, match=r"agent.constraint.lr: 0.25 there, 0.1 in the sweep"):
        _check_existing(old)


def test_antmaze_datasets_are_a_fact_of_the_data_package():
    from metaconstraint.algos import common
    from metaconstraint.data import ANTMAZE_DATASETS

    assert common.ANTMAZE_DATASETS is ANTMAZE_DATASETS and "antmaze-umaze" in ANTMAZE_DATASETS
    assert algos.iql.IQL_PRESETS["antmaze-large-play"]["beta"] == 10.0


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "pendulum_tiny.npz")


def test_a_run_directory_written_with_the_old_names_resumes_exactly(tiny_npz, tmp_path):
    """A run stopped at step 100 whose config.yaml and checkpoint hold the old names (as the running sweep's
    do) ends at step 200 exactly where a straight run with the new names does."""
    config = resolve(flags={"algo": "aspc", "dataset": str(tiny_npz), "steps": 200, "eval_every": 100, "seed": 0},
                     sets=["actor_hidden=16,16", "critic_width=16", "batch_size=64", "log_every=50",
                           "checkpoint_every=100", "eval_episodes=2", "constraint.every=2", "constraint.lr=0.05",
                           "constraint.horizon=2"])
    straight, _ = run(config, tmp_path / "straight")
    run_dir = tmp_path / "old"
    _, first = run(config, run_dir, stop_after=100)
    assert first.step == 100
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old_layout(config.to_dict()), sort_keys=False))
    for _, path in list_checkpoints(run_dir):
        state = load_checkpoint(path)
        state["config"] = old_layout(state["config"])
        state["agent"]["config"] = old_layout({"algo": "aspc", "agent": state["agent"]["config"]})["agent"]
        save_checkpoint(state, path)
    text = (run_dir / "config.yaml").read_text()
    assert "alpha_lr: 0.05" in text and "horizon: 2" in text and "constraint" not in text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        resumed = Trainer.resume(run_dir, progress=False, echo=None, plots=False)
        result = resumed.train()
    assert result.status == "finished" and result.step == 200
    assert "setting agent.alpha_lr is now called agent.constraint.lr (the old name still loads; write the new one)" \
        in renamed(caught)
    assert resumed.config.agent.constraint == config.agent.constraint
    want, got = flat_tensors(straight.agent.state_dict()), flat_tensors(resumed.agent.state_dict())
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]) if isinstance(want[k], torch.Tensor) else want[k] == got[k], k
    assert metric_rows(tmp_path / "straight") == metric_rows(run_dir)  # the same rows, to the last digit
