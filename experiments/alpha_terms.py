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

--trace SPEC --variant NAME --seed-of-run S instead re-trains that variant's runs of a sweep spec (the same configuration, data,
sampler and seed as the sweep's run; evaluation off) and records, at every alpha update of the run, each term's
hypergradient at exactly the state, batch and lookahead that update uses. The JSON per dataset goes to --out-dir, with a
table of each term's net push on alpha over the run and a figure of the cumulative pushes:

    python experiments/alpha_terms.py --trace experiments/alpha_study.yaml --variant aspc-lr --seed-of-run 0 \
        --out-dir experiments/results/alpha_study/terms
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


def probe(agent: Any, settings: Any, terms: tuple[str, ...]) -> Any:
    """A constraint like ``agent``'s (``settings``: its config, maybe another horizon) whose outer loss is ``terms`` alone;
    only its ``hypergradient`` is used, with the agent's own coefficient state passed in."""
    from metaconstraint.constraint.bilevel import AdaptiveConstraint, ASPCOuter

    outer = agent.constraint.outer
    return AdaptiveConstraint(settings, None, agent.device, agent.dtype,
                              outer=ASPCOuter(terms, outer.delta_q, outer.ema_decay))


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
            single = probe(agent, settings, terms)
            for batch in data:
                hg = single.hypergradient(agent.actor_objective(batch), params, agent.actor_opt, agent.actor_opt_state,
                                         con.state)
                grads["all" if len(terms) > 1 else terms[0]].append(float(hg.grads["rho"]))
        for i, total in enumerate(grads["all"]):
            parts = sum(grads[t][i] for t in TERMS)
            if abs(parts - total) > 1e-3 * max(1.0, abs(total)):
                raise SystemExit(f"alpha_terms: {run_dir}, horizon {h}, batch {i}: the terms add to {parts:.6g}, "
                                 f"the outer loss's hypergradient is {total:.6g}")
        out["horizons"][str(h)] = grads
    return out


def trace_run(config: Any, run_dir: Path) -> dict[str, Any]:
    """Train ``config`` (a RunConfig) into ``run_dir`` and record each outer term's hypergradient at every alpha update."""
    from metaconstraint.training import Trainer

    trainer = Trainer(config, run_dir, progress=False, echo=None, plots=False, tensorboard=False)
    trainer.setup()
    agent = trainer.agent
    con = agent.constraint
    probes = {t: probe(agent, con.config, (t,)) for t in TERMS}
    rows: list[dict[str, float]] = []
    step = con.coefficient_step
    beta1 = con.coefficient.betas[0]
    momentum = {t: 0.0 for t in TERMS}  # Adam's first moment, split by term (it is linear in the gradients)

    def traced(objective, params, opt, opt_state, state, outer_objective=None):  # noqa: ANN001 - the step's own
        new, result = step(objective, params, opt, opt_state, state, outer_objective)
        row = {"update": agent.num_updates, "alpha": float(torch.nn.functional.softplus(state.rho)),
               "all": float(result.logs["hypergrad"]), "d_rho": float(new.rho - state.rho)}
        for t, single in probes.items():
            row[t] = float(single.hypergradient(objective, params, opt, opt_state, state, outer_objective).grads["rho"])
            momentum[t] = beta1 * momentum[t] + (1.0 - beta1) * row[t]
        # Adam's step on rho is -lr * m_hat / (sqrt(v_hat) + eps), linear in m = sum of the terms' moments: each term's
        # share of this update's change of rho is d_rho * m_term / m (exact, whatever lr, v and eps were)
        m = float(new.opt_state[1]["mu"]["rho"])
        row["m_error"] = abs(sum(momentum.values()) - m) / max(abs(m), 1e-12)
        for t in TERMS:
            row[f"d_rho_{t}"] = row["d_rho"] * momentum[t] / m if m != 0.0 else 0.0
        rows.append(row)
        return new, result

    con.coefficient_step = traced
    result = trainer.train()
    return {"dataset": config.dataset, "seed": config.seed, "steps": config.steps, "alpha_end": float(con.value()),
            "status": result.status, "rows": rows}


def trace_table(traces: list[dict[str, Any]]) -> str:
    """Per dataset: how far each term moved rho = softplus^-1(alpha) over the run (its share of every Adam step, summed;
    the shares add up to rho's whole change), and on how many updates its hypergradient pushed alpha up."""
    head = ["dataset", "alpha start -> end", "change of rho", *(f"by {t}" for t in TERMS),
            "updates on which the term pushes alpha up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tr in traces:
        rows = tr["rows"]
        moved = {t: sum(r[f"d_rho_{t}"] for r in rows) for t in TERMS}
        up = {t: sum(r[t] < 0 for r in rows) / len(rows) for t in TERMS}
        lines.append("| " + " | ".join([tr["dataset"].split("/")[-1], f"{rows[0]['alpha']:.3g} -> {tr['alpha_end']:.3g}",
                                          f"{sum(r['d_rho'] for r in rows):+.3g}", *(f"{moved[t]:+.3g}" for t in TERMS),
                                          ", ".join(f"{t} {up[t]:.0%}" for t in TERMS)]) + " |")
    return "\n".join(lines)


def trace_figure(traces: list[dict[str, Any]], path: Path) -> None:
    """How far each term has moved rho so far (cumulative share of the Adam steps), one panel per dataset, alpha on a
    second axis (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traces), figsize=(3.2 * len(traces), 3.0), squeeze=False)
    for ax, tr in zip(axes[0], traces):
        steps = [r["update"] for r in tr["rows"]]
        for t in (*TERMS, ""):
            total, cum = 0.0, []
            for r in tr["rows"]:
                total += r[f"d_rho_{t}" if t else "d_rho"]
                cum.append(total)
            ax.plot(steps, cum, label=t or "all", lw=2.0 if not t else 1.0, color="k" if not t else None)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"{tr['dataset'].split('/')[-1]} (alpha {tr['alpha_end']:.2g} at the end)", fontsize=8)
        ax.set_xlabel("update", fontsize=8)
        twin = ax.twinx()
        twin.plot(steps, [r["alpha"] for r in tr["rows"]], color="grey", ls="--", lw=0.8)
        twin.tick_params(labelsize=6)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("change of rho = softplus^-1(alpha) so far, by term", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trace_spec(spec_path: str, variant: str, seed: int, out_dir: Path, work: Path,
               datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """Trace every dataset (or those named in ``datasets``) of ``variant``'s runs of seed ``seed`` in a sweep spec."""
    from metaconstraint.config import run_config_from_dict
    from metaconstraint.sweep import load_spec, plan

    runs = [r for r in plan(load_spec(spec_path)) if r.name.split("/")[0] == variant and r.config["seed"] == seed
            and (datasets is None or r.config["dataset"] in datasets)]
    if not runs:
        raise SystemExit(f"alpha_terms: no runs of variant '{variant}' with seed {seed} in {spec_path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    traces = []
    for r in runs:
        config = run_config_from_dict({**r.config, "eval_every": 0})
        trace = trace_run(config, work / r.run_dir.name)
        (out_dir / f"{r.run_dir.name}.json").write_text(json.dumps(trace) + "\n")
        print(f"{r.run_dir.name}: {len(trace['rows'])} alpha updates, alpha {trace['alpha_end']:.3g}", flush=True)
        traces.append(trace)
    return traces


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
    ap.add_argument("runs", nargs="*", help="ASPC run directories")
    ap.add_argument("--trace", metavar="SPEC", help="re-train a sweep spec's variant and trace every alpha update")
    ap.add_argument("--variant", help="with --trace: the variant (config name) to trace")
    ap.add_argument("--out-dir", type=Path, help="with --trace: where the traces, table and figure go")
    ap.add_argument("--datasets", help="with --trace: only these datasets of the spec, comma-separated")
    ap.add_argument("--horizons", default="1,20", help="actor steps of the lookahead, comma-separated (default 1,20)")
    ap.add_argument("--batches", type=int, default=16, help="batches per run (default 16)")
    ap.add_argument("--checkpoint", type=int, default=None, help="the checkpoint's step (default: the newest)")
    ap.add_argument("--seed", type=int, default=12345, help="seed of the batches drawn")
    ap.add_argument("--seed-of-run", type=int, default=0, help="with --trace: the runs' seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the per-batch hypergradients as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.trace:
        if not (a.variant and a.out_dir):
            ap.error("--trace needs --variant and --out-dir")
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            only = a.datasets.split(",") if a.datasets else None
            traces = trace_spec(a.trace, a.variant, a.seed_of_run, a.out_dir, Path(work), only)
        text = trace_table(traces)
        (a.out_dir / "table.md").write_text(text + "\n")
        trace_figure(traces, a.out_dir / "pushes.png")
        print(text)
        return 0
    if not a.runs:
        ap.error("give run directories, or --trace SPEC")
    horizons = [int(h) for h in a.horizons.split(",")]
    results = [term_hypergradients(Path(d), horizons, a.batches, a.checkpoint, a.seed) for d in a.runs]
    print(table(results))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
