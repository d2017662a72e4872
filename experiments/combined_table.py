"""One markdown table for issue 9 from the committed run summaries (experiments/results).

`metaconstraint report` groups runs by algorithm name, so it cannot tell TD3+BC with the
robust critic from TD3+BC with the plain one; this script reads the same summary.json files
and puts the three variants side by side, with ASPC's final alpha and the per-seed values.
Statistics as in `report`: last evaluation's normalised score, mean ± std (ddof=0) over seeds.

    python experiments/combined_table.py experiments/results > experiments/results/table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = {"aspc": "ASPC", "td3bc-robust": "TD3+BC α=2.5 (robust critic)", "td3bc-plain": "TD3+BC α=2.5 (plain critic)"}
DATASETS = ["random", "medium-replay", "medium", "expert"]  # rough order of data quality


def load(results: Path) -> dict[tuple[str, str], list[dict]]:
    """Finished runs' summaries by (variant, dataset short name)."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(results.glob("*/*/summary.json")):
        variant = path.parent.parent.name
        summary = json.loads(path.read_text())
        if variant not in VARIANTS or summary.get("status") != "finished":
            continue
        dataset = summary["dataset"].split("/")[-1].removesuffix("-v0")
        cells.setdefault((variant, dataset), []).append(summary)
    return cells


def fmt(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f} (n={len(a)})"


def main(results: Path) -> str:
    cells = load(results)
    out = ["| dataset | " + " | ".join(VARIANTS.values()) + " | ASPC final α |", "|---|---|---|---|---|"]
    means: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for d in DATASETS:
        row = []
        for v in VARIANTS:
            scores = [s["final_score"] for s in cells.get((v, d), [])]
            if scores:
                means[v].append(float(np.mean(scores)))
            row.append(fmt(scores, 1))
        alphas = [s["coef_end"] for s in cells.get(("aspc", d), [])]
        out.append(f"| {d} | " + " | ".join(row) + f" | {fmt(alphas, 3)} |")
    out.append("| **average** | " + " | ".join(f"{np.mean(m):.1f}" if m else "–" for m in means.values()) + " | |")
    out += ["", "Per seed (final normalised score; ASPC also α at the end, min and max over training):", ""]
    out += ["| dataset | variant | seed 0 | seed 1 | seed 2 |", "|---|---|---|---|---|"]
    for d in DATASETS:
        for v in VARIANTS:
            by_seed = {s["seed"]: s for s in cells.get((v, d), [])}
            vals = []
            for seed in (0, 1, 2):
                s = by_seed.get(seed)
                if s is None:
                    vals.append("–")
                elif v == "aspc":
                    vals.append(f"{s['final_score']:.1f} (α {s['coef_end']:.3f}, {s['coef_min']:.3f}–{s['coef_max']:.3f})")
                else:
                    vals.append(f"{s['final_score']:.1f}")
            out.append(f"| {d} | {v} | " + " | ".join(vals) + " |")
    walls = [s["wall_s"] for runs in cells.values() for s in runs]
    out += ["", f"{len(walls)} finished runs; summed training wall time {sum(walls) / 60:.1f} min "
            "(per-run `wall_s`, two runs at a time)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/results")), end="")
