"""Issue 14: which term of ASPC's outer loss pushes alpha, on which data, and whether the horizon changes that.

For each ASPC run directory (at its newest checkpoint, or --checkpoint STEP): draw --batches batches from the run's
dataset with the run's own observation normaliser and reward scale, and at the run's state (actor, critics, Adam state,
rho, the Q EMA) compute, for each horizon in --horizons and each outer term L1, L2, L3 of the spec alone, the
hypergradient d(term)/d(rho) through that many actor steps. d alpha / d rho = sigmoid(rho) > 0, so a term whose
hypergradient is positive pushes alpha down (gradient descent) and one whose hypergradient is negative pushes it up.
The three terms' hypergradients add up to the full outer loss's (the script checks it on every batch).

    python experiments/alpha_terms.py experiments/results/alpha_confirm/aspc-lr*/*-s0 --horizons 1,20 \
        --out experiments/results/alpha_confirm/terms.json

Needs the runs' checkpoints (they are not committed: run the sweep first). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

TERMS = ("L1", "L2", "L3")


def term_hypergradients(run_dir: Path, horizons: list[int], batches: int, checkpoint: int | None,
                        seed: int) -> dict[str, Any]:
    """Per horizon and term: the hypergradient on each of ``batches`` batches, and the full outer loss's."""
    from metaconstraint.constraint.bilevel import AdaptiveConstraint, ASPCOuter
    from metaconstraint.data import Sampler, load
    from metaconstraint.rundir import load_run

    run = load_run(run_dir, checkpoint)
    agent, cfg = run.agent, run.config
    con = agent.constraint
    if not isinstance(con, AdaptiveConstraint) or not isinstance(con.outer, ASPCOuter):
        raise SystemExit(f"alpha_terms: {run_dir} is not an ASPC run with the spec's outer loss")
    sampler = Sampler(load(cfg.dataset), cfg.batch_size, agent.device, run.normalizer, cfg.reward_scale, seed=seed)
    data = [sampler.sample() for _ in range(batches)]
    params = {k: v.detach() for k, v in agent.actor.named_parameters()}
    out: dict[str, Any] = {"run": str(run_dir), "dataset": cfg.dataset, "step": run.step,
                           "alpha": float(con.value()), "horizon_trained": con.config.horizon, "horizons": {}}
    for h in horizons:
        settings = dataclasses.replace(con.config, horizon=h, method="unrolled")
        grads: dict[str, list[float]] = {t: [] for t in (*TERMS, "all")}
        for terms in [(t,) for t in TERMS] + [TERMS]:
            outer = ASPCOuter(terms, con.outer.delta_q, con.outer.ema_decay)
            probe = AdaptiveConstraint(settings, None, agent.device, agent.dtype, outer=outer)
            for batch in data:
                hg = probe.hypergradient(agent.actor_objective(batch), params, agent.actor_opt, agent.actor_opt_state,
                                         con.state)
                grads["all" if len(terms) > 1 else terms[0]].append(float(hg.grads["rho"]))
        for i, total in enumerate(grads["all"]):
            parts = sum(grads[t][i] for t in TERMS)
            if abs(parts - total) > 1e-3 * max(1.0, abs(total)):
                raise SystemExit(f"alpha_terms: {run_dir}, horizon {h}, batch {i}: the terms add to {parts:.6g}, "
                                 f"the outer loss's hypergradient is {total:.6g}")
        out["horizons"][str(h)] = grads
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Mean hypergradient per term (and the share of batches on which it pushes alpha up), per run and horizon."""
    head = ["run", "dataset", "final alpha", "horizon", *(f"d{t}/d rho" for t in TERMS), "total", "pushes alpha"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for h, grads in r["horizons"].items():
            mean = {k: sum(v) / len(v) for k, v in grads.items()}
            up = sum(g < 0 for g in grads["all"]) / len(grads["all"])
            cells = [Path(r["run"]).name, r["dataset"].split("/")[-1], f"{r['alpha']:.3g}", h,
                     *(f"{mean[t]:+.3g}" for t in TERMS), f"{mean['all']:+.3g}",
                     f"{'up' if mean['all'] < 0 else 'down'} ({up:.0%} of batches up)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="ASPC run directories")
    ap.add_argument("--horizons", default="1,20", help="actor steps of the lookahead, comma-separated (default 1,20)")
    ap.add_argument("--batches", type=int, default=16, help="batches per run (default 16)")
    ap.add_argument("--checkpoint", type=int, default=None, help="the checkpoint's step (default: the newest)")
    ap.add_argument("--seed", type=int, default=12345, help="seed of the batches drawn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the per-batch hypergradients as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    horizons = [int(h) for h in a.horizons.split(",")]
    results = [term_hypergradients(Path(d), horizons, a.batches, a.checkpoint, a.seed) for d in a.runs]
    print(table(results))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
