"""report and plot group runs by their full configuration minus the seed: different settings are never
averaged together unless asked (--pool), and a column says how it differs from the algorithm's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from metaconstraint import cli
from metaconstraint.plotting import group_runs, settings_key, variant_labels
from metaconstraint.rundir import load_run_data
from metaconstraint.report import report_markdown

ROOT = Path(__file__).resolve().parent.parent
DATA = "metaconstraint/pendulum/medium-v0"


def fake_run(root: Path, name: str, score: float, seed: int, algo: str = "aspc", dataset: str = DATA,
             coef: float = 2.5, **settings) -> Path:
    """A finished run's files as `train` writes them; ``settings``: run settings, ``agent_*`` for agent fields."""
    agent = {k[6:]: v for k, v in settings.items() if k.startswith("agent_")}
    config = {"algo": algo, "dataset": dataset, "seed": seed, **{k: v for k, v in settings.items() if not k.startswith("agent_")}}
    if agent:
        config["agent"] = agent
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.csv").write_text(f"step,eval_score,alpha\n100,{score},{coef}\n")
    (d / "summary.json").write_text(json.dumps({"status": "finished", "step": 100, "final_score": score,
                                                "coefficient": "alpha", "coef_end": coef}))
    return d


def table(text: str) -> dict[str, dict[str, str]]:
    """The first table of a report: {column: {dataset: cell}}."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| dataset |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    out: dict[str, dict[str, str]] = {h: {} for h in header[1:]}
    for ln in lines[start + 2:]:
        if not ln.startswith("| "):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for h, c in zip(header[1:], cells[1:]):
            out[h][cells[0]] = c
    return out


@pytest.fixture
def two_alphas(tmp_path) -> Path:
    """ASPC at alpha 2.5 (its default) and 3.0, two seeds each: what a new user's --set alpha=3.0 makes."""
    for seed, (a, b) in enumerate([(10.0, 30.0), (20.0, 50.0)]):
        fake_run(tmp_path, f"a25-s{seed}", a, seed, agent_alpha=2.5)
        fake_run(tmp_path, f"a30-s{seed}", b, seed, agent_alpha=3.0, coef=3.0)
    return tmp_path


def test_runs_with_different_settings_are_separate_columns(two_alphas):
    text = report_markdown(two_alphas)
    t = table(text)
    assert set(t) == {"aspc", "aspc [alpha=3.0]"}
    assert t["aspc"][DATA] == "15.0 ± 5.0 (n=2)" and t["aspc [alpha=3.0]"][DATA] == "40.0 ± 10.0 (n=2)"
    assert "2.750" not in text and "27.5" not in text  # nothing pooled across alpha = 2.5 and 3.0


def test_pooling_different_settings_needs_the_flag_and_is_stated(two_alphas, capsys):
    code = cli.main(["report", str(two_alphas), "--pool", "alpha"])
    out = capsys.readouterr().out
    assert code == 0
    assert table(out) == {"aspc": {DATA: "27.5 ± 14.8 (n=4)"}}
    assert "aspc on metaconstraint/pendulum/medium-v0: pooled as asked over runs with different alpha (2.5, 3.0)" in out
    assert "2.750 ± 0.250 (n=4)" in out  # the coefficient pooled too, and said so above
    assert "and over alpha as asked" in out


def test_a_misspelt_pool_setting_stops_with_a_suggestion(two_alphas, capsys):
    code = cli.main(["report", str(two_alphas), "--pool", "alpah"])
    err = capsys.readouterr().err
    assert code == 2 and "--pool alpah: no run has a setting 'alpah'; did you mean alpha" in err


def test_labels_show_what_differs_from_the_defaults_and_shared_settings_once(tmp_path):
    fake_run(tmp_path, "t-robust", 10.0, 0, algo="td3bc", steps=8000, agent_critic="robust")
    fake_run(tmp_path, "t-plain", 11.0, 0, algo="td3bc", steps=8000, agent_critic="plain")  # td3bc's own critic
    # written before issue 18 (alpha_lr, not constraint.lr): labelled by the new name
    fake_run(tmp_path, "a-lr", 12.0, 0, steps=8000, agent_alpha_lr=0.25, agent_alpha=2.5)
    fake_run(tmp_path, "iql", 13.0, 0, algo="iql", steps=8000, reward_scale="locomotion", log_every=7, device="cuda")
    text = report_markdown(tmp_path)
    assert set(table(text)) == {"td3bc [critic=robust]", "td3bc", "aspc [constraint.lr=0.25]",
                                "iql [reward_scale=locomotion]"}
    assert "every column of a metaconstraint algorithm also has steps=8000." in text  # shared: not in each label


def test_runs_that_differ_only_in_their_tag_get_different_labels(tmp_path):
    fake_run(tmp_path, "a", 1.0, 0)
    fake_run(tmp_path, "b", 2.0, 0, tag="rerun")
    assert set(table(report_markdown(tmp_path))) == {"aspc", "aspc [tag=rerun]"}


def test_seed_device_and_logging_do_not_split_a_group_and_unknown_algorithms_still_group():
    base = {"algo": "aspc", "dataset": DATA, "seed": 0, "device": "cpu", "log_every": 100, "agent": {"alpha": 2.5}}
    other = {**base, "seed": 3, "device": "cuda", "log_every": 50, "checkpoint_every": 7, "eval_seed": 9}
    assert settings_key(base) == settings_key(other)
    assert settings_key(base) != settings_key({**base, "agent": {"alpha": 2.6}})
    assert settings_key(base, pool=["alpha"]) == settings_key({**base, "agent": {"alpha": 2.6}}, pool=["alpha"])
    peer = [{"algo": "d3rlpy-td3plusbc", "dataset": DATA, "seed": 0, "d3rlpy": v} for v in ("2.8.1", "2.9.0")]
    labels, _ = variant_labels(peer)
    assert sorted(labels.values()) == ["d3rlpy-td3plusbc [d3rlpy=2.8.1]", "d3rlpy-td3plusbc [d3rlpy=2.9.0]"]


def test_plot_groups_like_the_report(two_alphas, tmp_path, capsys):
    runs = [load_run_data(p) for p in sorted(two_alphas.iterdir()) if p.is_dir()]
    groups, _ = group_runs(runs)
    assert {k: len(v) for k, v in groups.items()} == {f"aspc / {DATA}": 2, f"aspc [alpha=3.0] / {DATA}": 2}
    pooled, _ = group_runs(runs, pool=["alpha"])
    assert {k: len(v) for k, v in pooled.items()} == {f"aspc / {DATA}": 4}
    code = cli.main(["plot", str(two_alphas), "--out", str(tmp_path / "plots"), "--pool", "alpha"])
    assert code == 0 and (tmp_path / "plots" / "score.png").stat().st_size > 5000


def test_the_committed_report_is_what_report_makes_of_the_committed_runs():
    results = ROOT / "experiments" / "results"
    suite = sorted(p for p in results.iterdir()  # the variants' folders; issue 14's alpha_study has its own report
                   if p.is_dir() and p.name != "alpha_study" and any(p.glob("*/config.yaml")))
    text = report_markdown(suite, title="Issue 9: small-scale suite (8k steps, width 64, 3 seeds)", per_seed=True)
    assert text == (results / "report.md").read_text()


def quality_run(root: Path, name: str, dataset: str, data_score: float, coef: float, seed: int, **kw) -> Path:
    d = fake_run(root, name, 50.0, seed, dataset=dataset, coef=coef, **kw)
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**summary, "dataset_score": data_score}))
    return d


def quality_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The quality-correlation table: {(column, datasets): [rho, p, per seed, pairs]}."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| column | datasets | Spearman"))
    out = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("| "):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out[(cells[0], cells[1])] = cells[2:]
    return out


def test_report_ranks_the_final_coefficient_against_the_datas_quality(tmp_path):
    """Spearman rho between the data's score and the final alpha, per learned column and domain: checked against
    the hand formula 1 - 6 sum d^2 / (n (n^2 - 1)); fixed coefficients and domains under 3 datasets get no row."""
    pend = [f"metaconstraint/pendulum/{q}-v0" for q in ("random", "medium", "expert", "medium-expert")]
    data = [10.0, 40.0, 98.0, 70.0]
    for seed, alphas in enumerate([(4.0, 3.0, 2.0, 1.0), (4.0, 3.0, 1.0, 2.0)]):  # seed 1: expert and m-e swapped
        for d, score, a in zip(pend, data, alphas):
            quality_run(tmp_path, f"aspc-{Path(d).name}-s{seed}", d, score, a, seed, agent_alpha_lr=0.25)
            quality_run(tmp_path, f"td3bc-{Path(d).name}-s{seed}", d, score, 2.5, seed, algo="td3bc")
        for d, score, a in zip(["metaconstraint/hopper/random-v0", "metaconstraint/hopper/medium-v0"], [1.0, 29.0],
                               (9.0, 10.0)):  # 2 Hopper datasets: no Hopper row, but an 'all' row
            quality_run(tmp_path, f"aspc-h-{Path(d).name}-s{seed}", d, score, a, seed, agent_alpha_lr=0.25)
    rows = quality_rows(report_markdown(tmp_path))
    assert set(rows) == {("aspc [constraint.lr=0.25]", "pendulum (4)"), ("aspc [constraint.lr=0.25]", "all (6)")}
    rho, p, per_seed, pairs = rows[("aspc [constraint.lr=0.25]", "pendulum (4)")]
    # by data score: random 10, medium 40, m-e 70, expert 98; mean alpha 4, 3, 1.5, 1.5 (a tie)
    assert rho == "-0.95" and float(p) < 0.06
    # seed 0: alpha ranks 4, 3, 1, 2 against 1, 2, 3, 4: d^2 = 9+1+4+4 = 18, rho = 1 - 6*18/60 = -0.80; seed 1: -1
    assert per_seed == "s0 -0.80, s1 -1.00"
    assert pairs == "4.00 (10.0), 3.00 (40.0), 1.50 (70.0), 1.50 (98.0)"
    # all 6: data ranks 1..6 against alpha 9, 4, 10, 3, 1.5, 1.5 (ranks 5, 4, 6, 3, 1.5, 1.5): Pearson of the
    # ranks = -14 / sqrt(17.5 * 17) = -0.81
    assert rows[("aspc [constraint.lr=0.25]", "all (6)")][0] == "-0.81"


def test_old_run_configs_without_newer_settings_group_with_new_ones():
    """A config written before ``horizon``/``method``/``outer_batch``/``env_id`` existed (and with the
    settings of alpha's update under their names before issue 18) is the same
    configuration as a new one at those settings' defaults: one column, labelled as the default."""
    from metaconstraint.config import resolve
    from metaconstraint.plotting import resolved_settings, settings_key, variant_labels

    new = resolve(flags={"algo": "aspc", "dataset": "x/pendulum/medium-v0", "steps": 8000}).to_dict()
    old = json.loads(json.dumps(new))
    block = old["agent"].pop("constraint")  # and before issue 18, its settings by their old names
    old["agent"].update(alpha_lr=block["lr"], alpha_every=block["every"], alpha_lr_decay_to=block["lr_decay_to"],
                        terms=block["terms"], delta_q=block["delta_q"], ema_decay=block["ema_decay"])
    del old["agent"]["outer_batch"]
    for key in ("env_id", "ref_min_score", "ref_max_score"):
        old.pop(key, None)
    assert settings_key(old) == settings_key(new)
    flat = resolved_settings(old)
    assert flat["agent.constraint.horizon"] == 1 and flat["agent.constraint.method"] == "unrolled"
    assert flat["agent.constraint.lr"] == 2e-3 and "agent.alpha_lr" not in flat
    labels, _ = variant_labels([old, new])
    assert list(labels.values()) == ["aspc"]
    # a non-default value still splits, and an old config lacking the key is the default's group
    other = json.loads(json.dumps(new))
    other["agent"]["constraint"]["horizon"] = 3
    labels, _ = variant_labels([old, new, other])
    assert sorted(labels.values()) == ["aspc", "aspc [constraint.horizon=3]"]
    assert labels[settings_key(old)] == "aspc"


def _coef_run(root: Path, name: str, algo: str, key: str, values: list[float], terms: bool = False) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"algo": algo, "dataset": DATA, "seed": 0}))
    extra = ",L1,L2,L3,delta_q,hypergrad" if terms else ""
    rows = [f"{100 * (i + 1)},{10.0 * i},1.0,{v}" + (f",{-1 - i},{1e-4 * (i + 1)},{1e-7 * (i + 1)},{0.01 * i},{-1e-3}" if terms else "")
            for i, v in enumerate(values)]
    (d / "metrics.csv").write_text(f"step,eval_score,q_mean,{key}{extra}\n" + "\n".join(rows) + "\n")
    (d / "summary.json").write_text(json.dumps({"status": "finished", "step": 100 * len(values), "coefficient": key,
                                                "coef_start": values[0], "coef_min": min(values), "coef_max": max(values),
                                                "coef_end": values[-1]}))
    return d


def test_plots_name_the_coefficient_file_after_it_and_skip_fixed_coefficients(tmp_path):
    from metaconstraint.plotting import plot_runs

    adaptive = _coef_run(tmp_path, "iqla", "iql-adaptive", "beta", [3.0, 3.1, 3.3], terms=True)
    fixed = _coef_run(tmp_path, "iql", "iql", "beta", [3.0, 3.0, 3.0])
    names = lambda paths: sorted(p.name for p in paths)  # noqa: E731
    assert names(plot_runs([adaptive], tmp_path / "a")) == ["beta.png", "losses.png", "overview.png", "score.png", "terms.png"]
    assert names(plot_runs([fixed], tmp_path / "f")) == ["losses.png", "overview.png", "score.png"]
    assert names(plot_runs([adaptive, fixed], tmp_path / "b")) == ["beta.png", "losses.png", "overview.png", "score.png",
                                                                   "terms.png"]
    aspc = _coef_run(tmp_path, "aspc", "aspc", "alpha", [2.5, 2.6, 2.7], terms=True)
    assert names(plot_runs([adaptive, aspc], tmp_path / "c"))[0] == "coefficient.png"  # two coefficients on one axis


def test_report_warns_when_one_datasets_runs_trained_on_different_builds_of_it(tmp_path):
    """Runs recording other content hashes (or, before the hash, other mean returns) for one dataset id get a
    warning naming them; runs on the same build get none."""
    def run(name, seed, **data):
        d = fake_run(tmp_path / name.split("-")[0], name, 50.0, seed)
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, **data}))

    run("a-s0", 0, dataset_return=-764.8, dataset_sha256="ab" * 32)
    run("a-s1", 1, dataset_return=-764.8, dataset_sha256="ab" * 32)
    assert "Warning" not in report_markdown(tmp_path)
    run("a-s2", 2, dataset_return=-779.6, dataset_sha256="cd" * 32)
    text = report_markdown(tmp_path)
    assert (f"**Warning: the runs of {DATA} trained on 2 different builds of it** (sha256 {'ab' * 6}: a-s0, a-s1; "
            f"sha256 {'cd' * 6}: a-s2)") in text
    run("b-s3", 3, dataset_return=-764.8)  # a run from before the hash: builds are told apart by the mean return
    assert "(mean return -764.800000: a-s0, a-s1, b-s3; mean return -779.600000: a-s2)" in report_markdown(tmp_path)
