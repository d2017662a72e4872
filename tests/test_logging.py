"""What a run records about itself: summary.json's environment, TensorBoard tags and hparams."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from metaconstraint import cli
from metaconstraint.metrics import tensorboard_tag
from metaconstraint.rundir import git_commit
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
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu"] == env["device_name"] != ""
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
    assert hp["agent.constraint.every"].number_value == 2 and hp["agent.actor_hidden"].string_value == "[16, 16]"


def test_the_untrained_policy_is_evaluated_at_step_0(run_dir):
    from metaconstraint.rundir import read_metrics

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


def _wandb_records(path: Path) -> list:
    """The protobuf records of a W&B ``.wandb`` file (LevelDB-log framing: 32 KiB blocks of
    checksum(4) length(2) type(1) data; type 1 full, 2 first, 3 middle, 4 last), for reading an offline run back."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, out, buf, block = 7, [], b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_logs_offline_into_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # the `wandb` extra (CI installs it)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the run directory wins over the environment
    data = write_tiny_npz(tmp_path / "tiny.npz", episodes=2)
    d = tmp_path / "run"
    argv = ["train", "--dataset", data, "--steps", 100, "--eval-every", 50, "--run-dir", d, "--quiet", "--wandb", "mc-test",
            "--set", *TINY_SETS]
    assert cli.main([str(a) for a in argv]) == 0
    files = list((d / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1  # offline by default: nothing was sent
    recs = _wandb_records(files[0])
    kinds = [r.WhichOneof("record_type") for r in recs]
    assert "run" in kinds, f"no run record in {files[0]} ({files[0].stat().st_size} bytes): {kinds}"
    run = recs[kinds.index("run")].run
    assert (run.project, run.display_name, run.run_group) == ("mc-test", "run", "run")
    config = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in run.config.update}
    assert config["algo"] == "aspc" and config["agent.constraint.every"] == 2
    key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731 (the field used differs by version)
    hist = [r.history for r in recs if r.WhichOneof("record_type") == "history"]
    history = [{key(i): json.loads(i.value_json) for i in h.item} for h in hist]
    rows = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
    assert [h.step.num for h in hist] == [r["step"] for r in rows] == [0, 50, 100]
    assert [h.get("eval/score") for h in history] == pytest.approx([r["eval_score"] for r in rows], rel=1e-9)
    assert history[-1]["coef/alpha"] == pytest.approx(rows[-1]["alpha"], rel=1e-9) and "train/critic_loss" in history[-1]
    summary = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            summary.update({key(u): json.loads(u.value_json) for u in r.summary.update})
    final = json.loads((d / "summary.json").read_text())
    assert summary["final_score"] == pytest.approx(final["final_score"]) and summary["status"] == "finished"


def test_wandb_without_the_package_says_which_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = cli.main(["train", "--wandb", "--run-dir", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "pip install -e '.[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
