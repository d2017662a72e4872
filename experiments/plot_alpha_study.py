"""Issue 14's figure: alpha's trajectory per ASPC variant (one panel each) and dataset (one line each, the mean over
seeds, thin lines the seeds), with the variant's Spearman rank correlation between the data's score and the final alpha.

    python experiments/plot_alpha_study.py experiments/results/alpha_study --out experiments/results/alpha_study/alpha.png

Reads the runs' config.yaml, summary.json and metrics.csv through metaconstraint.report (which groups runs by their full
settings, as `metaconstraint report` does); runs whose coefficient is fixed (TD3+BC) are left out.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def line_styles(datasets: list[str], cmap) -> tuple[dict[str, tuple], dict[str, str]]:
    """Each dataset's colour and line style: the style names the env, the colour the data's rank within its env
    (datasets in ``dataset_order``: poorest dark, best yellow), since alpha's scale and the data scores differ between
    envs."""
    from metaconstraint.report import dataset_order

    envs = list(dict.fromkeys(dataset_order(d)[0] for d in datasets))
    colour, style = {}, {}
    for k, env in enumerate(envs):
        of_env = [d for d in datasets if dataset_order(d)[0] == env]
        for i, d in enumerate(of_env):
            colour[d], style[d] = cmap(i / max(1, len(of_env) - 1)), ("-", "--", "-.", ":")[k % 4]
    return colour, style


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="folder(s) holding the study's run directories")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaconstraint.report import collect_runs, dataset_order, quality_correlations, summarise

    try:
        runs = collect_runs(args.runs)
    except FileNotFoundError as err:
        print(f"plot_alpha_study: {err}", file=sys.stderr)
        return 2
    cells, _ = summarise(runs)
    rho: dict[str, list] = {}  # per variant, its correlation in each domain with >= 3 datasets
    for q in quality_correlations(cells):
        if q.group != "all" and not math.isnan(q.rho):
            rho.setdefault(q.algo, []).append(q)
    learned = lambda r: not math.isclose(r.summary.get("coef_min", 0.0), r.summary.get("coef_max", 0.0))  # noqa: E731
    variants = sorted({a for (a, _), c in cells.items() if any(learned(r) for r in c.runs)})
    if not variants:
        print("plot_alpha_study: no runs with a learned coefficient", file=sys.stderr)
        return 2
    datasets = sorted({d for _, d in cells}, key=dataset_order)
    colour, style = line_styles(datasets, plt.get_cmap("viridis"))
    several_envs = len(set(style.values())) > 1  # then name the env too
    starts = {r.summary.get("coef_start") for c in cells.values() for r in c.runs if learned(r)}
    start = starts.pop() if len(starts) == 1 else None  # a dotted line at the coefficient's common start
    ncols = min(3, len(variants))
    nrows = math.ceil(len(variants) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), sharex=True, sharey=True, squeeze=False)
    for ax, variant in zip(axes.flat, variants):
        for d in datasets:
            cell = cells.get((variant, d))
            if cell is None:
                continue
            series = [r.series(r.coef_key) for r in cell.runs]
            for s, v in series:
                ax.plot(s, v, color=colour[d], ls=style[d], lw=0.6, alpha=0.45)
            n = min(len(v) for _, v in series)
            steps = series[0][0][:n]
            mean = np.mean([v[:n] for _, v in series], axis=0)
            data = cell.runs[0].summary.get("dataset_score")
            name = "/".join(d.split("/")[-2:]) if several_envs else d.split("/")[-1]
            label = name.removesuffix("-v0") + (f" (data {data:.0f})" if data is not None else "")
            ax.plot(steps, mean, color=colour[d], ls=style[d], lw=1.8, label=label)
        ax.set_yscale("log")
        qs = rho.get(variant, [])
        if several_envs:  # a rank correlation within each env (alpha's scale differs between them)
            what = ", ".join(f"{q.group} ({len(q.datasets)} datasets) {q.rho:+.2f}" for q in qs)
        else:
            what = ", ".join(f"{q.rho:+.2f}" for q in qs)
        ax.set_title(variant + (f"\nSpearman ρ(data score, final α): {what}" if qs else ""), fontsize=9)
        if start is not None:
            ax.axhline(start, color="0.5", ls=":", lw=1)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[-1]:
        ax.set_xlabel("gradient step")
    for ax in axes[:, 0]:
        ax.set_ylabel("α (log scale)")
    for ax in axes.flat[len(variants):]:
        ax.axis("off")
    for ax in axes.flat[:len(variants)]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
