"""``report RUNS_DIR``: a markdown table of final normalised scores, algorithm x dataset, over seeds.

A run's final score is its last evaluation's normalised score (mean over that evaluation's
episodes); a cell is the mean +- std over the runs (seeds) of that algorithm on that dataset,
std with ddof=0. The coefficient (alpha for ASPC) is reported at the end of training the same way.
Runs that did not finish are listed below the tables and left out of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .plotting import GREEK, RunData, find_runs, load_run_data

__all__ = ["Cell", "collect_runs", "report_markdown", "summarise"]


@dataclass
class Cell:
    """The runs of one algorithm on one dataset."""

    algo: str
    dataset: str
    scores: list[float]
    coefs: list[float]
    coef_key: str
    steps: list[int]
    seeds: list[int]

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


def summarise(runs: Sequence[RunData]) -> tuple[dict[tuple[str, str], Cell], list[str]]:
    """Cells by (algo, dataset), and notes on runs left out."""
    cells: dict[tuple[str, str], Cell] = {}
    notes: list[str] = []
    for run in runs:
        status = run.summary.get("status", "unknown (no summary.json)")
        if status != "finished":
            notes.append(f"`{run.path}`: left out, status {status} at step {run.summary.get('step', '?')}")
            continue
        score, coef = _final(run)
        if score is None:
            notes.append(f"`{run.path}`: left out, no normalised score (the dataset has no reference scores)")
            continue
        cell = cells.setdefault(
            (run.variant, run.dataset), Cell(run.variant, run.dataset, [], [], run.coef_key, [], [])
        )
        cell.scores.append(float(score))
        if coef is not None:
            cell.coefs.append(float(coef))
        cell.steps.append(int(run.summary.get("step", run.config.get("steps", 0))))
        cell.seeds.append(run.seed)
    for cell in cells.values():
        if len(set(cell.seeds)) < len(cell.seeds):
            notes.append(f"{cell.algo} on {cell.dataset}: several runs share a seed ({sorted(cell.seeds)})")
        if len(set(cell.steps)) > 1:
            notes.append(f"{cell.algo} on {cell.dataset}: runs of different lengths ({sorted(set(cell.steps))} steps)")
    return cells, notes


def _table(cells: dict[tuple[str, str], Cell], algos: list[str], datasets: list[str], what: str) -> list[str]:
    lines = ["| dataset | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for d in datasets:
        row = []
        for a in algos:
            c = cells.get((a, d))
            row.append("–" if c is None else (c.score_text if what == "score" else c.coef_text))
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    if what == "score" and len(datasets) > 1:
        avg = []
        for a in algos:
            means = [float(np.mean(cells[(a, d)].scores)) for d in datasets if (a, d) in cells]
            avg.append(f"{np.mean(means):.1f}" + ("" if len(means) == len(datasets) else f" ({len(means)} datasets)"))
        lines.append("| **average** | " + " | ".join(avg) + " |")
    return lines


def report_markdown(root: str | Path | Sequence[str | Path], title: str | None = None) -> str:
    """The markdown report of every run under ``root``."""
    runs = collect_runs(root)
    cells, notes = summarise(runs)
    algos = sorted({a for a, _ in cells})
    datasets = sorted({d for _, d in cells})
    lines = [f"# {title or 'Results'}", ""]
    if not cells:
        lines.append("No finished runs with normalised scores.")
    else:
        lines += [
            "Final normalised score (last evaluation; mean ± std over seeds, n = number of seeds; 100 = the "
            "dataset's expert reference, 0 = random):",
            "",
            *_table(cells, algos, datasets, "score"),
            "",
        ]
        keys = sorted({c.coef_key for c in cells.values() if c.coefs})
        if keys:
            names = ", ".join(f"{GREEK.get(k, k)} ({k})" for k in keys)
            lines += [
                f"Constraint coefficient at the end of training, {names} (mean ± std over seeds; fixed for "
                "non-adaptive algorithms):",
                "",
                *_table(cells, algos, datasets, "coef"),
                "",
            ]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    lines.append(f"{len(runs)} run(s) found; {sum(len(c.scores) for c in cells.values())} in the tables.")
    return "\n".join(lines) + "\n"
