"""Issue 14's experiment files: the screening and confirmation specs say what the README says they run, and the
committed screening results are runs of the screening spec with its settings, reported by `metaconstraint report`."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from metaconstraint.plotting import flat_settings
from metaconstraint.report import report_markdown
from metaconstraint.sweep import load_spec, plan

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "experiments" / "alpha_study.yaml"
CONFIRM = ROOT / "experiments" / "alpha_confirm.yaml"
RESULTS = ROOT / "experiments" / "results" / "alpha_study"
CONFIRMED = ROOT / "experiments" / "results" / "alpha_confirm"
PENDULUM = [f"metaconstraint/pendulum/{q}-v0" for q in ("random", "medium-replay", "medium", "medium-expert", "expert")]


def committed_runs(root: Path) -> list[Path]:
    """The run directories under ``root`` that git tracks (runs still training in a checkout are not results yet);
    outside a git checkout, every run directory."""
    try:
        listed = subprocess.run(["git", "ls-files", "--", "*/summary.json"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.parent for p in root.glob("*/*/config.yaml"))
    return sorted((root / f).parent for f in listed)


def by_variant(runs) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.name.split("/")[0], []).append(r)
    return out


def test_the_screening_changes_one_setting_per_variant_from_the_scaled_lr_aspc():
    runs = plan(load_spec(STUDY))
    variants = by_variant(runs)
    assert len(runs) == 90 and all(len(v) == 10 for v in variants.values())  # 5 datasets x seeds 0-1
    base = variants["aspc-lr"][0].config
    assert base["agent"]["constraint"]["lr"] == 0.25 and base["steps"] == 8000 and base["agent"]["critic_width"] == 64
    changed = {"aspc-lr-center": ("reward_scale", "center"), "aspc-lr-h5": ("agent.constraint.horizon", 5),
               "aspc-lr-h20": ("agent.constraint.horizon", 20), "aspc-lr-implicit": ("agent.constraint.method", "implicit"),
               "aspc-lr-fresh": ("agent.outer_batch", "fresh")}
    for name, (key, value) in changed.items():
        flat, flat_base = flat_settings(variants[name][0].config), flat_settings(base)
        diff = {k for k in flat.keys() | flat_base.keys() if flat.get(k) != flat_base.get(k)} - {"run_dir"}
        assert diff == {key} and flat[key] == value, (name, diff)
    assert {r.config["dataset"] for r in runs} == set(PENDULUM) and {r.config["seed"] for r in runs} == {0, 1}
    assert variants["td3bc-robust-center"][0].config["reward_scale"] == "center"
    both = variants["aspc-lr-center-h5"][0].config
    assert both["reward_scale"] == "center" and both["agent"]["constraint"] == {**base["agent"]["constraint"], "horizon": 5}


def test_the_confirmation_spec_runs_the_paper_sizes_for_50k_steps_on_5_datasets_and_3_seeds():
    runs = plan(load_spec(CONFIRM))
    assert len(runs) == 45
    for r in runs:
        assert r.config["steps"] == 50000 and r.config["seed"] in (0, 1, 2)
        if r.config["algo"] == "aspc":
            assert r.config["agent"]["constraint"]["lr"] == 0.04 and r.config["agent"]["critic_width"] == 256
            assert list(r.config["agent"]["actor_hidden"]) == [256, 256]
    assert {r.config["dataset"] for r in runs} == {*PENDULUM[::2], "metaconstraint/hopper/random-v0",
                                                  "metaconstraint/hopper/medium-v0"}


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no committed screening results")
def test_the_committed_screening_runs_are_runs_of_the_spec_and_its_report_is_what_report_makes():
    planned = {r.name: r for r in plan(load_spec(STUDY), RESULTS)}
    committed = {p.parent.relative_to(RESULTS).as_posix(): p for p in RESULTS.glob("*/*/config.yaml")}
    assert committed and set(committed) <= set(planned)
    for name, path in committed.items():  # written before issue 18: the constraint block by its old names
        have, want = flat_settings(yaml.safe_load(path.read_text())), flat_settings(planned[name].config)
        assert have == {k: want[k] for k in have}, name
    text = report_markdown(RESULTS, title="Issue 14: does alpha learn the data's quality? (screening)", per_seed=True)
    assert text == (RESULTS / "report.md").read_text()


@pytest.mark.skipif(not CONFIRMED.is_dir(), reason="no committed confirmation results")
def test_the_committed_confirmation_runs_are_finished_runs_of_the_spec_on_its_pinned_builds():
    """Every committed run is a run of alpha_confirm.yaml with its settings (the sweep's own check), finished, and
    trained on the build of its dataset that the spec pins; the committed report is what `report` makes of them."""
    from metaconstraint.rundir import read_summary
    from metaconstraint.sweep import _check_existing

    spec = load_spec(CONFIRM)
    pins = spec["settings"]["dataset_sha256"]
    planned = {r.name: r for r in plan(spec, CONFIRMED)}
    committed = committed_runs(CONFIRMED)
    assert committed
    pinned_return: dict[str, set[float]] = {}  # the data's mean return, as the runs that record the hash saw it
    unhashed: list[tuple[str, str, float]] = []  # runs from before the hash was recorded
    for run_dir in committed:
        name = run_dir.relative_to(CONFIRMED).as_posix()
        assert name in planned, name
        _check_existing([planned[name]])  # the sweep's own check: same settings (the dataset pin is not a result)
        dataset = planned[name].config["dataset"]  # the run's own, as _check_existing just found
        summary = read_summary(run_dir)
        assert summary["status"] == "finished" and summary["step"] == 50000, name
        if summary.get("dataset_sha256"):
            assert summary["dataset_sha256"].startswith(pins[dataset]), name
            pinned_return.setdefault(dataset, set()).add(summary["dataset_return"])
        else:
            unhashed.append((name, dataset, summary["dataset_return"]))
    assert all(len(v) == 1 for v in pinned_return.values())
    for name, dataset, ret in unhashed:  # the other build's data has another mean return (37.5 vs 39.0 on medium)
        assert {ret} == pinned_return[dataset], name
    text = report_markdown(committed, per_seed=True)
    assert text == (CONFIRMED / "report.md").read_text()


def _experiment_script(name: str):
    """The module of experiments/<name>.py (the experiments folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alpha_terms_splits_the_hypergradient_into_the_outer_terms(tmp_path):
    """experiments/alpha_terms.py on a tiny ASPC run: per horizon, the three terms' hypergradients add up to the full
    outer loss's on every batch (the script stops otherwise), L2 and L3 are not zero after training, and a longer
    lookahead gives another hypergradient."""
    from metaconstraint import cli

    from .test_cli import tiny_train_args
    from .test_training import write_tiny_npz

    data = write_tiny_npz(tmp_path / "tiny.npz")
    run_dir = tmp_path / "run"
    assert cli.main([str(a) for a in tiny_train_args(data, run_dir, "aspc", steps=120)]) == 0
    module = _experiment_script("alpha_terms")
    (result,) = [module.term_hypergradients(run_dir, [1, 3], batches=3, checkpoint=None, seed=0)]
    assert result["step"] == 120 and set(result["horizons"]) == {"1", "3"}
    for h, grads in result["horizons"].items():
        for i in range(3):
            parts = sum(grads[t][i] for t in ("L1", "L2", "L3"))
            assert abs(parts - grads["all"][i]) <= 1e-3 * max(1.0, abs(grads["all"][i])), (h, i)
        assert any(g != 0.0 for g in grads["L1"]) and any(g != 0.0 for g in grads["L2"])
    assert result["horizons"]["1"]["all"] != result["horizons"]["3"]["all"]
    text = module.table([result])
    assert text.count("\n") == 3 and "| run |" in text.splitlines()[0]


def test_alpha_terms_trace_records_every_alpha_update_without_changing_the_run(tmp_path):
    """--trace: one row per alpha update with each term's hypergradient (adding up to the update's own), and the traced
    run ends where the same run without the trace does."""
    from .test_training import run, tiny_config, write_tiny_npz

    data = write_tiny_npz(tmp_path / "tiny.npz")
    module = _experiment_script("alpha_terms")
    config = tiny_config(data, steps=120, eval_every=0)
    trace = module.trace_run(config, tmp_path / "traced")
    _, plain = run(tiny_config(data, steps=120, eval_every=0), tmp_path / "plain")
    every, policy_freq = config.agent.constraint.every, config.agent.policy_freq
    assert [r["update"] for r in trace["rows"]] == list(range(every * policy_freq, 121, every * policy_freq))
    assert trace["alpha_end"] == plain.summary["coef_end"] != 2.5
    for r in trace["rows"]:
        assert abs(r["L1"] + r["L2"] + r["L3"] - r["all"]) <= 1e-3 * max(1.0, abs(r["all"]))
        assert r["m_error"] <= 1e-3  # the terms' moments add up to the optimizer's own
        assert abs(sum(r[f"d_rho_{t}"] for t in ("L1", "L2", "L3")) - r["d_rho"]) <= 1e-6 * max(1e-6, abs(r["d_rho"]))
    rho = [float(torch.log(torch.expm1(torch.tensor(a, dtype=torch.float64)))) for a in (2.5, trace["alpha_end"])]
    assert abs(sum(r["d_rho"] for r in trace["rows"]) - (rho[1] - rho[0])) <= 1e-4  # the steps add up to rho's change
    table = module.trace_table([trace]).splitlines()
    assert len(table) == 3 and table[2].startswith(f"| {Path(trace['dataset']).name} | ")


def test_the_alpha_figure_gives_each_env_a_line_style_and_ranks_colours_within_an_env(tmp_path):
    """plot_alpha_study: across envs the line style names the env and the colour the data's rank within its env
    (the poorest dataset of each env gets the colour map's first colour, the best its last); it draws the committed
    confirmation runs (two envs) into a PNG."""
    plot = _experiment_script("plot_alpha_study")
    cmap = lambda x: x  # noqa: E731  (a colour map that returns its argument)
    datasets = ["metaconstraint/hopper/random-v0", "metaconstraint/hopper/medium-v0",
                "metaconstraint/pendulum/random-v0", "metaconstraint/pendulum/medium-v0",
                "metaconstraint/pendulum/expert-v0"]
    colour, style = plot.line_styles(datasets, cmap)
    assert [colour[d] for d in datasets] == [0.0, 1.0, 0.0, 0.5, 1.0]
    assert style[datasets[0]] == style[datasets[1]] != style[datasets[2]] == style[datasets[4]]
    out = tmp_path / "alpha.png"
    assert plot.main([str(CONFIRMED), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
