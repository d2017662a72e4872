"""What a run records about itself: summary.json's environment, TensorBoard tags and hparams."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from metaconstraint import cli
from metaconstraint.training import git_commit, tensorboard_tag
from tests.test_training import TINY_SETS, write_tiny_npz

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logging")
    data = write_tiny_npz(tmp / "tiny.npz", episodes=2)
    d = tmp / "run"
    argv = ["train", "--dataset", data, "--steps", 100, "--eval-every", 50, "--run-dir", d, "--quiet", "--threads", 1,
            "--set", *TINY_SETS]
    assert cli.main([str(a) for a in argv]) == 0
    return d


def test_summary_records_versions_commit_device_and_threads(run_dir):
    import gymnasium
    import minari

    env = json.loads((run_dir / "summary.json").read_text())["environment"]
    v = env["versions"]
    assert v["torch"] == torch.__version__ and v["gymnasium"] == gymnasium.__version__
    assert v["minari"] == minari.__version__ and v["metaconstraint"] == "0.1.0"
    assert env["device"] == "cpu" and env["torch_threads"] == 1
    if (ROOT / ".git").exists():  # run from a checkout: its commit
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert env["git"]["commit"] == head and isinstance(env["git"]["dirty"], bool)


def test_no_commit_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) is None


def test_tensorboard_tags_are_grouped():
    assert tensorboard_tag("eval_score") == "eval/score" and tensorboard_tag("eval_return_std") == "eval/return_std"
    assert tensorboard_tag("alpha", "alpha") == "coef/alpha" and tensorboard_tag("beta", "beta") == "coef/beta"
    assert tensorboard_tag("critic_loss", "alpha") == "train/critic_loss" and tensorboard_tag("L1") == "train/L1"
    assert tensorboard_tag("steps_per_s") == "time/steps_per_s"


def test_tensorboard_gets_grouped_scalars_and_the_config_as_hparams(run_dir):
    pytest.importorskip("tensorboard")  # the `tensorboard` extra (CI installs it)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/critic_loss", "train/L1", "coef/alpha", "eval/score", "eval/return", "time/steps_per_s"} <= tags
    assert not [t for t in tags if "/" not in t]
    scores = [e.value for e in acc.Scalars("eval/score")]
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert scores == pytest.approx([r["eval_score"] for r in rows if "eval_score" in r], rel=1e-6) and len(scores) == 3
    content = acc.PluginTagToContent("hparams")
    hp = None
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            hp = data.session_start_info.hparams
    assert hp is not None
    assert hp["algo"].string_value == "aspc" and hp["steps"].number_value == 100
    assert hp["agent.alpha_every"].number_value == 2 and hp["agent.actor_hidden"].string_value == "[16, 16]"


def test_the_untrained_policy_is_evaluated_at_step_0(run_dir):
    from metaconstraint.training import read_metrics

    rows = read_metrics(run_dir)
    assert rows[0]["step"] == 0 and "eval_score" in rows[0] and "critic_loss" not in rows[0]
    assert [r["step"] for r in rows if "eval_score" in r] == [0, 50, 100]
    evals = json.loads((run_dir / "summary.json").read_text())["evals"]
    assert [e["step"] for e in evals] == [0, 50, 100] and evals[0]["score"] == rows[0]["eval_score"]


def test_evaluation_shows_a_progress_bar(capsys):
    from metaconstraint.evaluation import evaluate
    from metaconstraint.nets import Actor

    evaluate(Actor(3, 1, 2.0, hidden=(8,)), "Pendulum-v1", episodes=3, seed=0, n_envs=2, progress=True)
    err = capsys.readouterr().err
    assert "eval Pendulum-v1" in err and "0/3 [" in err and "episode/s" in err
    evaluate(Actor(3, 1, 2.0, hidden=(8,)), "Pendulum-v1", episodes=1, seed=0)
    assert "eval Pendulum-v1" not in capsys.readouterr().err  # off unless asked
