"""The command line and the run config: overrides, errors, report, plot, eval and export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metaconstraint import cli
from metaconstraint.config import ConfigError, dump_yaml, parse_overrides, resolve
from metaconstraint.rundir import load_run
from tests.test_training import TINY_SETS, write_tiny_npz


def main(argv, capsys):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "pendulum_tiny.npz")


def tiny_train_args(dataset: Path, run_dir: Path, algo: str = "aspc", seed: int = 0, steps: int = 200):
    sets = [s for s in TINY_SETS if not (algo != "aspc" and s.startswith("agent.constraint."))]
    return ["train", "--algo", algo, "--dataset", dataset, "--steps", steps, "--eval-every", 0, "--seed", seed,
            "--run-dir", run_dir, "--quiet", "--set", *sets]


@pytest.fixture(scope="module")
def runs(tiny_npz, tmp_path_factory):
    """Three tiny finished runs: aspc seeds 0 and 1, td3bc seed 0."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for algo, seed in (("aspc", 0), ("aspc", 1), ("td3bc", 0)):
        d = root / f"{algo}-s{seed}"
        assert cli.main([str(a) for a in tiny_train_args(tiny_npz, d, algo, seed)]) == 0
        made[(algo, seed)] = d
    return root, made


# -- config overrides ---------------------------------------------------------------------------------


def test_override_values_are_parsed_by_the_fields_type():
    c = resolve(sets=["steps=1e4", "agent.constraint.every=5", "constraint.lr=1e-3", "actor_hidden=[32, 48]",
                      "critic_width=32", "normalize_obs=false", "reward_scale=0.5", "eval_seed=null",
                      "constraint.terms=L1+L2"])
    assert c.steps == 10_000 and isinstance(c.steps, int)
    assert c.agent.constraint.every == 5 and c.agent.constraint.lr == 1e-3 and c.agent.constraint.terms == "L1+L2"
    assert c.agent.actor_hidden == (32, 48) and c.agent.critic_width == 32
    assert c.normalize_obs is False and c.reward_scale == 0.5 and c.eval_seed is None
    assert c.agent.planned_steps == 10_000 and c.agent.seed == c.seed  # derived from the run
    assert resolve(sets=["actor_hidden=24,24"]).agent.actor_hidden == (24, 24)
    assert resolve(sets=["reward_scale=locomotion"]).reward_scale == "locomotion"


def test_layers_file_then_flags_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo: td3bc\nsteps: 100\nseed: 4\nagent:\n  alpha: 1.5\n  actor_lr: 0.001\n")
    c = resolve(file=f, flags={"steps": 200, "seed": None}, sets=["agent.alpha=3"])
    assert (c.algo, c.steps, c.seed) == ("td3bc", 200, 4)
    assert c.agent.alpha == 3.0 and c.agent.actor_lr == 1e-3
    assert c.preset == "quick" and c.agent.critic_width == 64  # the built-in dataset's default preset
    paper = resolve(flags={"dataset": "somewhere/hopper-medium-v2.hdf5"})
    assert paper.preset == "paper" and paper.steps == 1_000_000 and paper.agent.critic_width == 256


def test_a_saved_config_resolves_to_itself(tmp_path):
    c = resolve(flags={"algo": "aspc", "steps": 1234, "seed": 2}, sets=["agent.constraint.every=3", "batch_size=32"])
    path = tmp_path / "config.yaml"
    dump_yaml(c, path)
    again = resolve(file=path)
    assert again == c and again.to_dict() == c.to_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sets=["alpa=3"]), r"unknown setting 'alpa' \(--set\); did you mean alpha"),
        (dict(sets=["steps=abc"]), r"steps \(--set\) takes an integer, got 'abc'"),
        (dict(sets=["agent.alpha=yes"]), r"agent.alpha \(--set\) takes a number, got True"),
        (dict(sets=["actor_hidden=a,b"]), r"takes an integer, got 'a'"),
        (dict(sets=["normalize_obs=maybe"]), r"takes true/false"),
        (dict(sets=["steps"]), r"--set expects key=value"),
        (dict(sets=["agent.seed=3"]), r"agent.seed follows the run's --seed"),
        (dict(sets=["planned_steps=3"]), r"agent.planned_steps follows the run's --steps"),
        (dict(flags={"steps": -5}), r"steps must be a positive number"),
        (dict(flags={"algo": "aspx"}), r"unknown algorithm 'aspx' \(did you mean 'aspc'\?\)"),
        (dict(flags={"preset": "huge"}), r"unknown preset 'huge'"),
        (dict(sets=["device=gpu"]), r"device must be cpu, cuda"),
        (dict(sets=["reward_scale=lots"]), r"reward_scale must be one of none, locomotion, antmaze"),
        (dict(sets=["agent.tau=2"]), r"aspc settings: tau must lie in \(0, 1\]"),
    ],
)
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve(**kwargs)


def test_unknown_key_in_a_config_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: 10\nagent:\n  alpah: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'agent.alpah' \(config file .*bad.yaml\)"):
        resolve(file=f)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(file=tmp_path / "missing.yaml")


def test_parse_overrides_keeps_text_after_the_first_equals():
    assert parse_overrides(["dataset=a=b.npz", " steps = 5 "]) == {"dataset": "a=b.npz", "steps": "5"}


# -- CLI errors and help --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--steps", "-5"], r"--steps: must be a positive integer, got -5"),
        (["train", "--steps", "many"], r"--steps: expected a positive integer, got 'many'"),
        (["train", "--algo", "aspx"], r"unknown algorithm 'aspx' \(did you mean 'aspc'\?\); choose one of: .*td3bc"),
        (["train", "--set", "alpa=3"], r"error: unknown setting 'alpa'"),
        (["train", "--dataset", "no/such/dataset-v0", "--quiet"], r"error: no dataset 'no/such/dataset-v0'"),
        (["train", "--dataset", "missing.npz", "--quiet"], r"error: dataset file 'missing.npz' does not exist"),
        (["train", "--dataset-sha256", "xyz"], r"dataset_sha256 must be the data's content sha256 or a prefix"),
        (["train", "--dataset-sha256", "00000000", "--quiet"],
         r"error: dataset pendulum-medium has content sha256 [0-9a-f]{16}…, but the run asks for 00000000…"),
        (["train", "--resume", "RUN", "--steps", "5"], r"--resume continues a run .* drop --steps"),
        (["train", "--resume", "nowhere"], r"'nowhere' is not a run directory \(no config.yaml\)"),
        (["eval", "--run-dir", "nowhere"], r"run directory 'nowhere' does not exist"),
        (["export", "--run-dir", "nowhere", "--out", "p.pt"], r"run directory 'nowhere' does not exist"),
        (["report", "nowhere"], r"'nowhere' does not exist"),
    ],
)
def test_cli_errors_stop_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = main(argv, capsys)
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_second_run_into_the_same_directory_is_refused(runs, tiny_npz, capsys):
    _, made = runs
    code, _, err = main(tiny_train_args(tiny_npz, made[("aspc", 0)]), capsys)
    assert code == 2 and "already holds a run; continue it with `metaconstraint train --resume" in err


@pytest.mark.parametrize("command", ["train", "eval", "collect", "plot", "report", "export", "sweep"])
def test_help_of_every_command_shows_defaults(command, capsys):
    code, out, _ = main([command, "--help"], capsys)
    assert code == 0 and out.startswith("usage: metaconstraint " + command)
    assert "default" in out
    # each option says its default once: no "(default: X) (default: X)", no "(default: None)"
    options = re.split(r"\n  (?=-)", " ".join(out.split("\n\n")))
    for text in options:
        flat = " ".join(text.split())
        assert flat.count("(default:") <= 1, flat
        assert "(default: None)" not in flat and "(default: False)" not in flat, flat
    if command == "train":
        assert "(default: 12000 quick, 1000000 paper)" in out and "(default: aspc)" in out


def test_no_arguments_prints_help(capsys):
    code, out, _ = main([], capsys)
    assert code == 0 and "metaconstraint train" in out and "COMMAND" in out


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metaconstraint", "report", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: metaconstraint report" in proc.stdout


# -- report, plot, eval, export on tiny runs ----------------------------------------------------------------


def _final_from_metrics(run_dir: Path) -> tuple[float, float]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["eval_score"]), float(rows[-1]["alpha"])


def test_report_tables_mean_and_std_over_seeds(runs, capsys, tmp_path):
    root, made = runs
    out_md = tmp_path / "report.md"
    code, out, _ = main(["report", root, "--out", out_md], capsys)
    assert code == 0 and out_md.read_text() == out
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| dataset |"))
    assert lines[header] == "| dataset | aspc [constraint.every=2] | td3bc |"  # the tiny settings aspc alone has
    row = lines[header + 2]
    dataset = str(tiny_npz_path(made))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == dataset
    s0, _ = _final_from_metrics(made[("aspc", 0)])
    s1, _ = _final_from_metrics(made[("aspc", 1)])
    assert cells[1] == f"{np.mean([s0, s1]):.1f} ± {np.std([s0, s1]):.1f} (n=2)"
    t0, _ = _final_from_metrics(made[("td3bc", 0)])
    assert cells[2] == f"{t0:.1f} (n=1)"
    # alpha at the end: the agents' exact final values, from the checkpoints
    coef_header = next(i for i, ln in enumerate(lines) if ln.startswith("| dataset |") and i > header)
    coef_cells = [c.strip() for c in lines[coef_header + 2].strip("|").split("|")]
    a = [float(load_run(made[("aspc", s)]).agent.constraint.value()) for s in (0, 1)]
    assert coef_cells[1] == f"{np.mean(a):.3f} ± {np.std(a):.3f} (n=2)"
    assert coef_cells[2] == "2.500 (n=1)"  # TD3+BC's alpha is fixed
    assert "3 run(s) found; 3 in the tables; summed training wall time" in out


def tiny_npz_path(made) -> str:
    return yaml.safe_load((made[("aspc", 0)] / "config.yaml").read_text())["dataset"]


def test_report_leaves_out_unfinished_runs(runs, tiny_npz, tmp_path, capsys):
    _, made = runs
    d = tmp_path / "partial"
    args = tiny_train_args(tiny_npz, d, "aspc", 5, steps=200)
    assert cli.main([str(a) for a in args] + ["--stop-after", "100"]) == 0
    code, out, _ = main(["report", tmp_path], capsys)
    assert code == 0 and "left out, status stopped at step 100" in out and "No finished runs" in out


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_overlays_runs(runs, tmp_path, capsys):
    root, made = runs
    out_dir = tmp_path / "plots"
    code, out, _ = main(["plot", made[("aspc", 0)], made[("aspc", 1)], made[("td3bc", 0)], "--out", out_dir], capsys)
    assert code == 0 and "3 run(s) plotted" in out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["alpha.png", "losses.png", "overview.png", "score.png", "terms.png"]
    assert all(_png_ok(p) for p in out_dir.iterdir())
    # each training run drew its own plots too; TD3+BC's alpha is fixed: no alpha.png, and no terms
    assert all(_png_ok(made[("aspc", s)] / "plots" / name) for s in (0, 1) for name in ("alpha.png", "terms.png"))
    assert sorted(p.name for p in (made[("td3bc", 0)] / "plots").iterdir()) == ["losses.png", "overview.png", "score.png"]


def test_eval_reproduces_the_final_training_evaluation(runs, capsys):
    _, made = runs
    d = made[("aspc", 0)]
    code, out, _ = main(["eval", "--run-dir", d, "--episodes", 2, "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    score, _ = _final_from_metrics(d)
    assert res["step"] == 200 and res["score_mean"] == pytest.approx(score, rel=1e-12)
    assert (d / "evals" / f"step_00000200_episodes2_seed{1_000_000}.json").is_file()


def test_export_runs_in_plain_torch_and_matches_the_agent(runs, tmp_path, capsys):
    _, made = runs
    d = made[("aspc", 1)]
    out_file = tmp_path / "policy.pt"
    code, out, _ = main(["export", "--run-dir", d, "--out", out_file], capsys)
    assert code == 0 and out_file.is_file()
    run = load_run(d)
    obs = np.random.default_rng(0).uniform([-1, -1, -8], [1, 1, 8], size=(16, 3)).astype(np.float32)
    with torch.no_grad():
        want = run.agent.act(run.normalizer(torch.as_tensor(obs))).numpy()
    script = (
        "import sys, json, torch\n"
        "m = torch.jit.load(sys.argv[1])\n"
        "x = torch.tensor(json.loads(sys.argv[2]))\n"
        "extra = {'metaconstraint.json': ''}\n"
        "torch.jit.load(sys.argv[1], _extra_files=extra)\n"
        "assert not [k for k in sys.modules if k.startswith('metaconstraint')]\n"
        "print(json.dumps({'batch': m(x).tolist(), 'single': m(x[0]).tolist(),"
        " 'meta': json.loads(extra['metaconstraint.json'])}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out_file), json.dumps(obs.tolist())],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    got = np.asarray(res["batch"], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res["single"], want[0], rtol=0, atol=1e-6)
    assert res["meta"]["algo"] == "aspc" and res["meta"]["env_id"] == "Pendulum-v1" and res["meta"]["step"] == 200
    assert np.abs(want).max() > 1e-3  # the policy is not trivially zero


def test_an_exported_policy_takes_numpy_and_records_data_with_collect(runs, tmp_path, capsys):
    """load_policy rebuilds the exported policy from plain data (numpy in, numpy out); collect --policy takes the file."""
    import warnings

    from metaconstraint.data import load
    from metaconstraint.export import LoadedPolicy, load_policy

    _, made = runs
    out_file = tmp_path / "policy.pt"
    assert main(["export", "--run-dir", made[("aspc", 0)], "--out", out_file], capsys)[0] == 0
    policy = load_policy(out_file)
    assert isinstance(policy, LoadedPolicy) and policy.env_id == "Pendulum-v1" and policy.meta["step"] == 200
    obs = np.random.default_rng(1).uniform([-1, -1, -8], [1, 1, 8], size=(16, 3)).astype(np.float32)
    got = policy(obs)
    assert isinstance(got, np.ndarray) and got.shape == (16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(out_file))
    np.testing.assert_allclose(got, scripted(torch.as_tensor(obs)).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(policy(obs[0].tolist()), got[0], rtol=0, atol=1e-6)  # one observation, a list
    assert torch.is_tensor(policy(torch.as_tensor(obs)))
    code, out, err = main(["collect", "Pendulum-v1", "--behaviour", "policy", "--policy", out_file, "--steps", 30,
                           "--datasets-path", tmp_path / "minari", "--no-progress"], capsys)
    assert code == 0, err
    assert out.startswith("wrote metaconstraint/pendulum/policy-v0: 30 steps, 1 episodes")
    t = load(tmp_path / "minari" / "metaconstraint/pendulum/policy-v0")
    np.testing.assert_allclose(t.actions, policy(t.observations), rtol=0, atol=1e-6)


def test_a_hostile_export_file_runs_no_code(tmp_path):
    import os
    import pickle
    import warnings

    from metaconstraint.export import PAYLOAD, load_policy
    from metaconstraint.rundir import RunError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(path),
                       _extra_files={"metaconstraint.json": "{}", PAYLOAD: pickle.dumps(Evil())})
    with pytest.raises(RunError, match="cannot rebuild the policy"):
        load_policy(path)
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(plain))
    with pytest.raises(RunError, match="export it again"):
        load_policy(plain)


def test_export_traces_agents_whose_actor_is_not_the_policy():
    """A Gaussian-style actor returning (mean, log_std): export goes through act() and tracing."""
    from metaconstraint.algos.base import AgentDefaults
    from metaconstraint.export import ExportedPolicy, _AgentAct, policy_module

    class TupleActor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 2)

        def forward(self, obs):
            h = self.net(obs)
            return torch.tanh(h[..., :1]), h[..., 1:]

    class Agent(AgentDefaults):  # no export module of its own
        def __init__(self):
            torch.manual_seed(0)
            self.actor = TupleActor()

        @torch.no_grad()
        def act(self, obs):
            return self.actor(obs)[0] * 2.0

    agent = Agent()
    module = policy_module(agent, 3)
    assert isinstance(module, _AgentAct)
    pol = ExportedPolicy(module, torch.zeros(3), torch.ones(3), torch.full((1,), -2.0), torch.full((1,), 2.0))
    traced = torch.jit.trace(pol, torch.randn(4, 3))
    x = torch.randn(9, 3)
    assert torch.equal(traced(x), agent.act(x))
    assert not torch.equal(traced(x), agent.actor(x)[0])  # the x2 of act() is in the traced graph


def test_report_and_plots_tell_critic_variants_apart():
    from metaconstraint.plotting import variant_labels

    def label(algo, critic):
        return next(iter(variant_labels([{"algo": algo, "agent": {"critic": critic}}, {"algo": "iql"}])[0].values()))

    assert label("td3bc", "robust") == "td3bc [critic=robust]"  # TD3+BC* is its own column
    assert label("td3bc", "plain") == "td3bc"
    assert label("aspc", "robust") == "aspc"
    assert label("aspc", "plain") == "aspc [critic=plain]"


def test_a_tag_keeps_runs_of_one_algorithm_apart():
    from metaconstraint.plotting import variant_labels

    labels, _ = variant_labels([{"algo": "aspc", "tag": "constraint.lr=0.25"}, {"algo": "aspc", "tag": ""}])
    assert sorted(labels.values()) == ["aspc", "aspc [tag=constraint.lr=0.25]"]
    assert resolve(sets=["tag=ablation-L1"]).tag == "ablation-L1"


def test_datasets_are_ordered_by_domain_then_quality():
    from metaconstraint.report import dataset_order

    names = ["metaconstraint/pendulum/expert-v0", "hopper-medium-v2", "metaconstraint/hopper/random-v0",
             "metaconstraint/pendulum/medium-replay-v0", "metaconstraint/pendulum/medium-v0",
             "data/hopper-medium-expert-v2.hdf5", "my-data.npz"]
    assert sorted(names, key=dataset_order) == [
        "metaconstraint/hopper/random-v0", "hopper-medium-v2", "data/hopper-medium-expert-v2.hdf5", "my-data.npz",
        "metaconstraint/pendulum/medium-replay-v0", "metaconstraint/pendulum/medium-v0",
        "metaconstraint/pendulum/expert-v0"]


def _fake_run(root, name, algo, dataset, seed, score, coef=(2.5, 2.5, 2.5), tag=""):
    """A finished run's files as `train` writes them (config.yaml, summary.json, metrics.csv)."""
    import json

    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"algo": algo, "dataset": dataset, "seed": seed, "tag": tag}))
    (d / "metrics.csv").write_text("step,eval_score\n100,0.0\n")
    lo, end, hi = coef
    (d / "summary.json").write_text(json.dumps({
        "status": "finished", "step": 100, "final_score": score, "coefficient": "alpha", "coef_min": lo,
        "coef_end": end, "coef_max": hi, "dataset_score": 40.0, "wall_s": 1800.0}))


def test_report_averages_each_domain_and_lists_seeds(tmp_path, capsys):
    for seed, (a, b) in enumerate([(10.0, 30.0), (20.0, 50.0)]):
        _fake_run(tmp_path, f"a-p-{seed}", "aspc", "metaconstraint/pendulum/medium-v0", seed, a, (2.4, 2.45, 2.5))
        _fake_run(tmp_path, f"a-h-{seed}", "aspc", "metaconstraint/hopper/medium-v0", seed, b, (2.4, 2.45, 2.5))
        _fake_run(tmp_path, f"t-h-{seed}", "aspc", "metaconstraint/hopper/medium-v0", seed, b + 10,
                  (0.009999999776482582, 0.01, 0.01), tag="lr")
    _fake_run(tmp_path, "a-h-e", "aspc", "metaconstraint/hopper/expert-v0", 0, 90.0, (2.5, 2.6, 2.7))
    code, out, _ = main(["report", tmp_path, "--per-seed"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "| dataset | aspc | aspc [tag=lr] |" in lines
    rows = [ln for ln in lines if ln.startswith("| ") and "(n=" in ln][:3]
    assert [r.split(" | ")[0] for r in rows] == [
        "| metaconstraint/hopper/medium-v0", "| metaconstraint/hopper/expert-v0", "| metaconstraint/pendulum/medium-v0"]
    # hopper: aspc (40 + 90) / 2, all: (40 + 90 + 15) / 3; aspc [tag=lr] ran on one hopper dataset only
    assert "| **average, hopper** (2) | 65.0 | 50.0 (1 datasets) |" in lines
    assert "| **average, pendulum** (1) | 15.0 | – |" in lines
    assert "| **average** | 48.3 | 50.0 (1 datasets) |" in lines
    assert "| metaconstraint/hopper/medium-v0 | aspc | 30.0 (α 2.450, 2.400–2.500) | 50.0 (α 2.450, 2.400–2.500) |" in lines
    # a fixed coefficient (here logged as float32 and float64 copies of 0.01) shows no range
    assert "| metaconstraint/hopper/medium-v0 | aspc [tag=lr] | 40.0 | 60.0 |" in lines
    assert "summed training wall time 210.0 min." in out


def test_coefficient_axis_goes_log_when_values_span_a_decade():
    from metaconstraint.plotting import spans_decades

    assert spans_decades([0.26, 2.5, 11.7])  # ASPC's alpha across datasets
    assert not spans_decades([2.4, 2.5, 2.6])
    assert not spans_decades([0.0, 5.0])  # a zero cannot go on a log axis
    assert not spans_decades([])


def test_export_as_onnx_gives_the_agents_actions(runs, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")  # the `onnx` extra (CI installs it)
    pytest.importorskip("onnxscript")
    import onnx

    _, made = runs
    d = made[("td3bc", 0)]
    out_file = tmp_path / "policy.onnx"
    code, out, err = main(["export", "--run-dir", d, "--out", out_file, "--format", "onnx"], capsys)
    assert code == 0, err
    assert "as ONNX: input 'obs' (batch, 3)" in out and "[torch.onnx]" not in out
    run = load_run(d)
    obs = np.random.default_rng(2).uniform([-1, -1, -8], [1, 1, 8], size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        want = run.agent.act(run.normalizer(torch.as_tensor(obs))).numpy()
    got = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"]).run(None, {"obs": obs})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(out_file)).metadata_props}
    meta = json.loads(props["metaconstraint"])
    assert meta["algo"] == "td3bc" and meta["env_id"] == "Pendulum-v1" and meta["obs_dim"] == 3
