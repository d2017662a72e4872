"""``report RUNS_DIR``: a markdown table of final normalised scores, configuration x dataset, over seeds.

A column is one configuration: runs are grouped by their full resolved settings minus the seed
(and minus what does not change a result: device, logging and checkpoint cadence; see
``plotting.NOT_RESULT``), so runs with different settings are never averaged together. ``pool``
names settings to average over anyway; the report then says so. A column is labelled by the
algorithm and the settings that differ from its defaults (``aspc [constraint.lr=0.25]``); settings
every column shares away from the defaults are stated once above the table.

A run's final score is its last evaluation's normalised score (mean over that evaluation's
episodes); a cell is the mean +- std over the runs (seeds) of that configuration on that dataset,
std with ddof=0. The coefficient (alpha for ASPC) is reported at the end of training the same way.
Runs that did not finish are listed below the tables and left out of them. A run without reference
scores (its dataset has none and none were given) enters with its final raw return: its dataset's row
says "return, not normalised" and stays out of the averages. ``ref=(min, max)`` (``report
--ref-min-score/--ref-max-score``, optionally only for ``env_id``) normalises such runs' returns. Datasets are grouped
by domain and ordered by data quality (random, medium-replay, medium, medium-expert, expert); with
several domains each gets its own average row. ``per_seed=True`` adds every run's final score (and,
for a learned coefficient, its end value and range over training) so disagreeing seeds show.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .plotting import GREEK, check_pool, describe_settings, format_value, resolved_settings, settings_key, variant_labels
from .rundir import RunData, find_runs, load_run_data

__all__ = ["Cell", "collect_runs", "dataset_order", "quality_correlations", "report_markdown", "summarise"]

# D4RL / Minari quality levels, poorest first (the longest match wins: medium-replay before medium)
QUALITY = ["random", "medium-replay", "medium", "medium-expert", "expert"]


@dataclass
class Cell:
    """The runs of one configuration on one dataset (``algo``: the column's label)."""

    algo: str
    dataset: str
    scores: list[float]
    coefs: list[float]
    coef_key: str
    runs: list[RunData]
    raw: bool = False  # the values are raw returns (no reference scores), not normalised scores

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def steps(self) -> list[int]:
        return [int(r.summary.get("step", r.config.get("steps", 0))) for r in self.runs]

    def _fmt(self, values: list[float], digits: int) -> str:
        if not values:
            return "–"
        a = np.asarray(values, dtype=np.float64)
        text = f"{a.mean():.{digits}f} ± {a.std():.{digits}f}" if len(a) > 1 else f"{a[0]:.{digits}f}"
        return f"{text} (n={len(a)})"

    @property
    def score_text(self) -> str:
        return self._fmt(self.scores, 1)

    @property
    def coef_text(self) -> str:
        return self._fmt(self.coefs, 3) if self.coefs else "–"


def collect_runs(root: str | Path | Sequence[str | Path]) -> list[RunData]:
    paths = [root] if isinstance(root, (str, Path)) else list(root)
    return [load_run_data(p) for p in find_runs(paths)]


def _final(run: RunData) -> tuple[float | None, float | None]:
    """(final normalised score, final coefficient) of a run, from summary.json or its metrics."""
    score = run.summary.get("final_score")
    if score is None:
        s, v = run.series("eval_score")
        score = float(v[-1]) if len(v) else None
    coef = run.summary.get("coef_end")
    if coef is None:
        s, v = run.series(run.coef_key)
        coef = float(v[-1]) if len(v) else None
    return score, coef


def _final_return(run: RunData) -> float | None:
    ret = run.summary.get("final_return")
    if ret is None:
        _, v = run.series("eval_return")
        ret = float(v[-1]) if len(v) else None
    return ret


def summarise(runs: Sequence[RunData], pool: Sequence[str] = (), ref: tuple[float, float] | None = None,
              ref_env: str | None = None) -> tuple[dict[tuple[str, str], Cell], list[str]]:
    """Cells by (column label, dataset), and notes on runs left out or pooled.

    A run without a normalised score enters with its raw final return (its cell has ``raw=True``), or
    normalised with ``ref=(min, max)`` when given (only runs whose env is ``ref_env``, when that is given)."""
    cells: dict[tuple[str, str], Cell] = {}
    notes: list[str] = []
    kept: list[tuple[RunData, float, float | None, bool]] = []
    for run in runs:
        status = run.summary.get("status", "unknown (no summary.json)")
        if status != "finished":
            notes.append(f"`{run.path}`: left out, status {status} at step {run.summary.get('step', '?')}")
            continue
        score, coef = _final(run)
        raw = False
        if score is None:
            ret = _final_return(run)
            if ret is None:
                notes.append(f"`{run.path}`: left out, no evaluation")
                continue
            env = run.summary.get("env_id") or run.config.get("env_id")
            if ref is not None and (ref_env is None or env == ref_env):
                score = 100.0 * (ret - ref[0]) / (ref[1] - ref[0])
                notes.append(f"`{run.path}`: no reference scores of its own; normalised with --ref-min-score "
                             f"{ref[0]:g} --ref-max-score {ref[1]:g}")
            else:
                score, raw = ret, True
        kept.append((run, score, coef, raw))
    labels, _ = variant_labels((r.config for r, _, _, _ in kept), pool)
    for run, score, coef, raw in kept:
        label = labels[settings_key(run.config, pool)]
        cell = cells.setdefault((label, run.dataset), Cell(label, run.dataset, [], [], run.coef_key, []))
        cell.runs.append(run)
        cell.scores.append(float(score))
        cell.raw = cell.raw or raw
        if coef is not None:
            cell.coefs.append(float(coef))
    for cell in cells.values():
        if cell.raw and any(_final(r)[0] is not None for r in cell.runs):  # some runs scored, some did not
            cell.scores = [float(_final_return(r)) for r in cell.runs]
            notes.append(f"{cell.algo} on {cell.dataset}: some runs have reference scores and some not; raw returns shown")
    for cell in cells.values():
        if len(set(cell.seeds)) < len(cell.seeds):
            notes.append(f"{cell.algo} on {cell.dataset}: several runs share a seed ({sorted(cell.seeds)})")
        if len(set(cell.steps)) > 1:
            notes.append(f"{cell.algo} on {cell.dataset}: runs of different lengths ({sorted(set(cell.steps))} steps)")
        pooled = _pooled_values(cell.runs, pool)
        if pooled:
            notes.append(f"{cell.algo} on {cell.dataset}: pooled as asked over runs with different "
                         + "; ".join(f"{k} ({', '.join(v)})" for k, v in pooled.items()))
    return cells, notes


def _pooled_values(runs: Sequence[RunData], pool: Sequence[str]) -> dict[str, list[str]]:
    """The pooled settings whose values differ among ``runs``, with those values."""
    out: dict[str, list[str]] = {}
    for name in pool:
        values = sorted({format_value(f.get(name, f.get(f"agent.{name}"))) for f in (resolved_settings(r.config) for r in runs)})
        if len(values) > 1:
            out[name] = values
    return out


def dataset_order(name: str) -> tuple[str, int, str]:
    """Sort key: (domain, quality rank, name); ``metaconstraint/hopper/medium-replay-v0`` and
    ``hopper-medium-replay-v2`` both give domain ``hopper`` at rank 1."""
    stem = re.sub(r"[-_]v\d+$", "", Path(name).stem if name.endswith((".hdf5", ".npz")) else name)
    for level in sorted(QUALITY, key=len, reverse=True):
        if stem == level or stem.endswith(("/" + level, "-" + level)):
            domain = stem[: len(stem) - len(level)].rstrip("/-")
            return domain.split("/")[-1] or domain, QUALITY.index(level), name
    return stem, len(QUALITY), name


def _raw_datasets(cells: dict[tuple[str, str], Cell]) -> set[str]:
    return {d for (_, d), c in cells.items() if c.raw}


def _table(cells: dict[tuple[str, str], Cell], algos: list[str], datasets: list[str], what: str) -> list[str]:
    lines = ["| dataset | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    raw = _raw_datasets(cells) if what == "score" else set()
    for d in datasets:
        row = []
        for a in algos:
            c = cells.get((a, d))
            row.append("–" if c is None else (c.score_text if what == "score" else c.coef_text))
        name = f"{d} (return, not normalised)" if d in raw else d
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    datasets = [d for d in datasets if d not in raw]  # raw returns are not averaged with scores
    if what == "score" and len(datasets) > 1:
        domains: dict[str, list[str]] = {}
        for d in datasets:
            domains.setdefault(dataset_order(d)[0], []).append(d)
        groups = list(domains.items()) if len(domains) > 1 else []
        for label, group in groups + [("", datasets)]:
            avg = []
            for a in algos:
                means = [float(np.mean(cells[(a, d)].scores)) for d in group if (a, d) in cells]
                text = f"{np.mean(means):.1f}" if means else "–"
                avg.append(text + ("" if len(means) in (0, len(group)) else f" ({len(means)} datasets)"))
            name = f"**average, {label}** ({len(group)})" if label else "**average**"
            lines.append(f"| {name} | " + " | ".join(avg) + " |")
    return lines


def _per_seed(cells: dict[tuple[str, str], Cell], algos: list[str], datasets: list[str]) -> list[str]:
    """One row per (dataset, algorithm): each seed's final score, with a learned coefficient's
    end value and its range over training."""
    seeds = sorted({s for c in cells.values() for s in c.seeds})
    lines = ["| dataset | algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for d in datasets:
        for a in algos:
            cell = cells.get((a, d))
            if cell is None:
                continue
            by_seed = {}
            for run, score in zip(cell.runs, cell.scores):
                lo, hi, end = (run.summary.get(k) for k in ("coef_min", "coef_max", "coef_end"))
                # a fixed coefficient logs float32 and float64 copies of one value: not a range
                learned = None not in (lo, hi, end) and not math.isclose(lo, hi, rel_tol=1e-6)
                by_seed[run.seed] = f"{score:.1f}" + (f" ({GREEK.get(cell.coef_key, cell.coef_key)} {end:.3f}, "
                                                      f"{lo:.3f}–{hi:.3f})" if learned else "")
            lines.append(f"| {d} | {a} | " + " | ".join(by_seed.get(s, "–") for s in seeds) + " |")
    return lines


@dataclass
class QualityCorrelation:
    """Spearman rank correlation, across datasets, between the data's own normalised score and a column's
    final learned coefficient (mean over seeds per dataset); ``per_seed``: the same from each seed's runs,
    for the seeds that have a run on every one of the datasets."""

    algo: str
    group: str
    datasets: list[str]
    data_scores: list[float]
    coefs: list[float]
    rho: float
    p: float
    per_seed: dict[int, float]


def _spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(rho, p); nan for a constant input, where a rank correlation is undefined."""
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan, math.nan
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def quality_correlations(cells: dict[tuple[str, str], Cell], min_datasets: int = 3) -> list[QualityCorrelation]:
    """Per column whose coefficient is learned (its final values are not all equal), the Spearman rank
    correlation between the datasets' own normalised score and the final coefficient, over the column's
    datasets that have both: per domain with at least ``min_datasets`` of them, and over all its datasets
    when they span several domains (the ASPC paper's claim: strongly negative, a small alpha on expert data)."""
    out: list[QualityCorrelation] = []
    for algo in sorted({a for a, _ in cells}):
        usable = {}
        for (a, d), c in cells.items():
            data = [r.summary["dataset_score"] for r in c.runs if r.summary.get("dataset_score") is not None]
            if a == algo and c.coefs and data:
                usable[d] = (float(np.mean(data)), c)
        finals = [v for _, c in usable.values() for v in c.coefs]
        if not finals or all(math.isclose(v, finals[0], rel_tol=1e-6) for v in finals):
            continue  # a fixed coefficient: nothing to rank
        datasets = sorted(usable, key=dataset_order)
        domains: dict[str, list[str]] = {}
        for d in datasets:
            domains.setdefault(dataset_order(d)[0], []).append(d)
        groups = [(dom, ds) for dom, ds in domains.items() if len(ds) >= min_datasets]
        if len(domains) > 1 and len(datasets) >= min_datasets:
            groups.append(("all", datasets))
        for group, ds in groups:
            scores = [usable[d][0] for d in ds]
            coefs = [float(np.mean(usable[d][1].coefs)) for d in ds]
            rho, p = _spearman(scores, coefs)
            per_seed = {}
            for seed in sorted({s for d in ds for s in usable[d][1].seeds}):
                ends = []
                for d in ds:
                    c = usable[d][1]
                    vals = [v for r, v in zip(c.runs, c.coefs) if r.seed == seed]
                    ends.append(vals[0] if len(vals) == 1 else None)
                if None not in ends:
                    per_seed[seed] = _spearman(scores, ends)[0]
            out.append(QualityCorrelation(algo, group, ds, scores, coefs, rho, p, per_seed))
    return out


def data_builds(cells: dict[tuple[str, str], Cell]) -> dict[str, dict[str, list[RunData]]]:
    """The datasets whose runs did not all train on the same data: dataset -> {build: its runs}.

    A build is the data's content hash (``dataset_sha256`` in summary.json), or, when a run predates it, the
    data's mean episode return (the same data gives the same float64 mean)."""
    runs: dict[str, list[RunData]] = {}
    for c in cells.values():
        runs.setdefault(c.dataset, []).extend(r for r in c.runs if r.summary.get("dataset_return") is not None)
    out = {}
    for dataset, rs in runs.items():
        hashed = all(r.summary.get("dataset_sha256") for r in rs)
        builds: dict[str, list[RunData]] = {}
        for r in rs:
            key = (f"sha256 {r.summary['dataset_sha256'][:12]}" if hashed
                   else f"mean return {r.summary['dataset_return']:.6f}")
            builds.setdefault(key, []).append(r)
        if len(builds) > 1:
            out[dataset] = builds
    return out


def _data_build_lines(cells: dict[tuple[str, str], Cell]) -> list[str]:
    lines = []
    for dataset, builds in sorted(data_builds(cells).items()):
        parts = "; ".join(f"{key}: {', '.join(sorted(r.path.name for r in rs))}" for key, rs in builds.items())
        lines.append(f"**Warning: the runs of {dataset} trained on {len(builds)} different builds of it** ({parts}); "
                     "their rows mix datasets. Rebuild the data, and rerun the runs of the other build(s).")
    return lines + [""] if lines else []


def _quality_lines(cells: dict[tuple[str, str], Cell]) -> list[str]:
    found = quality_correlations(cells)
    if not found:
        return []
    keys = sorted({cells[(q.algo, q.datasets[0])].coef_key for q in found})
    coef = GREEK.get(keys[0], keys[0]) if len(keys) == 1 else "coefficient"
    lines = [f"Does the learned coefficient follow the data's quality? Spearman rank correlation across datasets "
             f"between the data's own normalised score and the final {coef} (mean over seeds), per column with "
             "a learned coefficient and at least 3 such datasets (per domain, and over all when several; the ASPC "
             "paper's claim is strongly negative: a small α on expert data, a large one on poor data). p is "
             "scipy's and has little power with 3-5 datasets; per seed: the same from each seed's runs alone.",
             "", f"| column | datasets | Spearman ρ | p | per seed | final {coef}, poorest → best data |",
             "|---|---|---|---|---|---|"]
    for q in found:
        order = sorted(range(len(q.datasets)), key=lambda i: q.data_scores[i])
        pairs = ", ".join(f"{q.coefs[i]:.2f} ({q.data_scores[i]:.1f})" for i in order)
        num = lambda v, fmt: "–" if math.isnan(v) else format(v, fmt)  # noqa: E731
        seeds = ", ".join(f"s{s} {num(r, '+.2f')}" for s, r in q.per_seed.items()) or "–"
        lines.append(f"| {q.algo} | {q.group} ({len(q.datasets)}) | {num(q.rho, '+.2f')} | {num(q.p, '.2f')} | {seeds} "
                     f"| {pairs} |")
    lines += ["", f"(In the last column each {coef} is followed by the data's own score in brackets.)", ""]
    return lines


def report_markdown(root: str | Path | Sequence[str | Path], title: str | None = None, per_seed: bool = False,
                    pool: Sequence[str] = (), ref: tuple[float, float] | None = None, ref_env: str | None = None) -> str:
    """The markdown report of every run under ``root``; ``pool``: settings to average over; ``ref``/``ref_env``:
    reference scores for runs that have none (see the module doc)."""
    runs = collect_runs(root)
    check_pool(runs, pool)
    cells, notes = summarise(runs, pool, ref, ref_env)
    _, common = variant_labels((c.runs[0].config for c in cells.values()), pool)
    algos = sorted({a for a, _ in cells})
    datasets = sorted({d for _, d in cells}, key=dataset_order)
    lines = [f"# {title or 'Results'}", ""]
    if not cells:
        lines.append("No finished runs.")
    else:
        lines += [
            "A column is one configuration: runs are averaged only when all their settings except the seed agree "
            "(the device, logging and checkpoint cadence and preset names aside; the values presets set count)"
            + (f", and over {', '.join(pool)} as asked" if pool else "")
            + ". Its label is the algorithm and the settings that differ from the algorithm's defaults"
            + (f"; every column of a metaconstraint algorithm also has {describe_settings(common)}." if common else "."),
            "",
            "Final normalised score (last evaluation; mean ± std over seeds, n = number of seeds; 100 = the "
            "dataset's expert reference, 0 = random"
            + ("; a row marked 'return, not normalised' holds raw final returns: its dataset has no reference "
               "scores (give them with --ref-min-score/--ref-max-score), and it is left out of the averages"
               if _raw_datasets(cells) else "") + "):",
            "",
            *_table(cells, algos, datasets, "score"),
            "",
        ]
        data = [(d, [r.summary["dataset_score"] for c in cells.values() if c.dataset == d for r in c.runs
                     if r.summary.get("dataset_score") is not None]) for d in datasets]
        if any(v for _, v in data):
            lines += ["The datasets' own normalised score (mean episode return in the data): "
                      + "; ".join(f"{d} {np.mean(v):.1f}" for d, v in data if v) + ".", ""]
        lines += _data_build_lines(cells)
        keys = sorted({c.coef_key for c in cells.values() if c.coefs})
        if keys:
            names = ", ".join(f"{GREEK.get(k, k)} ({k})" for k in keys)
            lines += [
                f"Constraint coefficient at the end of training, {names} (mean ± std over seeds; fixed for "
                "non-adaptive algorithms):",
                "",
                *_table(cells, algos, datasets, "coef"),
                "",
                *_quality_lines(cells),
            ]
        if per_seed:
            lines += ["Per seed: final normalised score; for a learned coefficient also its end value and "
                      "its min–max over training:", "", *_per_seed(cells, algos, datasets), ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    walls = [float(r.summary["wall_s"]) for c in cells.values() for r in c.runs if r.summary.get("wall_s") is not None]
    lines.append(f"{len(runs)} run(s) found; {sum(len(c.scores) for c in cells.values())} in the tables"
                 + (f"; summed training wall time {sum(walls) / 60:.1f} min." if walls else "."))
    return "\n".join(lines) + "\n"
