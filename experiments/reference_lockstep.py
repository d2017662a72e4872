"""Issue 14's per-step peer check: the ASPC authors' own code and ours, in lockstep, on the same batches.

``reference_peer.py`` runs the authors' ``aspc.py`` on its own (its own sampling and noise), so its alpha
trajectories can only be compared with ours statistically. This script removes every source of difference but
the code itself: both agents start from the same weights (the authors' initialisation, copied into ours) and the
same rho, and each update both get the same batch (sampled by the authors' ``ReplayBuffer``) and the same target
policy noise (the global torch RNG, which their ``train()`` draws ``randn_like`` from, is set to our agent's noise
generator before each of their updates). It then records alpha after every alpha update and how far the two
agents' parameters have drifted apart. If the two implement the same method, the gap stays at rounding level.

    PYTHONPATH=/work/peer/site python experiments/reference_lockstep.py \
        --reference-file /work/peer/aspc.py --dataset metaconstraint/pendulum/expert-v0 --steps 4000 \
        --width 64 --alpha-lr 0.25 --reward-mean data --out experiments/results/alpha_study/lockstep/expert-data.json

``python experiments/reference_lockstep.py --table DIR`` prints the table of the runs in DIR.

Both run in float64 by default (``--dtype float32`` to see float32 rounding drift instead). Our side is
``metaconstraint.algos.ASPC`` with the robust critic at ``--width`` (3 hidden layers, as theirs), actor
``(width, width)``, alpha lr ``--alpha-lr`` (their Adam's lr set to the same ``alpha_lr * k_alpha / 10``), and the
alpha-lr decay planned over ``--steps`` on both sides; with ``--reward-mean data`` their target subtracts the data's
mean reward and ours gets the centred rewards (what ``reward_scale=center`` does in ``train``). See
``reference_peer.py`` for how the authors' file is loaded (its d4rl/gym/wandb/pyrallis imports stubbed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_peer import accelerated_op_status, build, load_reference  # noqa: E402


def _copy_weights(src: torch.nn.Module, dst: list[torch.Tensor], what: str) -> None:
    """Copy the authors' module's parameters into ours (the same layer order and shapes, checked)."""
    s = list(src.named_parameters())
    if [tuple(p.shape) for _, p in s] != [tuple(q.shape) for q in dst]:
        raise SystemExit(f"reference_lockstep: the {what} layouts differ: theirs "
                         f"{[(n, tuple(p.shape)) for n, p in s]}, ours {[tuple(q.shape) for q in dst]}")
    with torch.no_grad():
        for (_, p), q in zip(s, dst):
            q.copy_(p)


def _member(critic: torch.nn.Module, j: int) -> list[torch.Tensor]:
    """Our critic ``j`` (of the stacked ensemble) as a list of parameter views."""
    return [p[j] for p in critic.parameters()]


def _max_rel_gap(a: list[torch.Tensor], b: torch.nn.Module) -> float:
    """max over parameters of ||a - b|| / ||b||."""
    with torch.no_grad():
        gaps = [float((p - q).norm() / q.norm().clamp_min(1e-300)) for p, q in zip(a, b.parameters())]
    return max(gaps)


def table(folder: Path, steps: tuple[int, ...] = (1000, 2000, 4000, 8000)) -> str:
    """A markdown table of every run under ``folder`` (``<variant>/<dataset>.json``): alpha at the end on both
    sides and the relative alpha gap at a few steps."""
    head = ["variant", "dataset", "final alpha, theirs / ours", *(f"alpha gap @{s}" for s in steps), "actor gap, end"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path in sorted(folder.glob("*/*.json")):
        d = json.loads(path.read_text())
        rows = {r["step"]: r for r in d["rows"]}
        gaps = [f"{rows[s]['alpha_rel_gap']:.1e}" if s in rows else "" for s in steps]
        lines.append(f"| {path.parent.name} | {path.stem} | {d['alpha_end']['theirs']:.3f} / {d['alpha_end']['ours']:.3f} | "
                     + " | ".join(gaps) + f" | {d['actor_rel_gap_end']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--table"]:
        print(table(Path(sys.argv[2])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-file", required=True, type=Path, help="the authors' algorithms/offline/aspc.py")
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--alpha-lr", type=float, default=2e-3)
    p.add_argument("--reward-mean", choices=["data", "zero"], default="data")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--keep-default-dtype", action="store_true",
                   help="leave torch's default dtype at float32 (their Adam's bias correction then runs in float32)")
    p.add_argument("--eps-root", type=float, default=None,
                   help="our actor Adam's eps_root (default: ours, 1e-16; 0: torchopt's value)")
    p.add_argument("--out", required=True, type=Path, help="JSON file for the per-update alphas and the gaps")
    a = p.parse_args(argv)
    from metaconstraint import data, optim
    from metaconstraint.algos import ASPC, ASPCConfig
    from metaconstraint.batch import Batch
    from metaconstraint.constraint import ConstraintSettings

    torch.set_num_threads(1)
    dtype = getattr(torch, a.dtype)
    ref = load_reference(a.reference_file)
    t = data.load(a.dataset)
    theirs, buffer, _ = build(ref, t, a.width, a.seed, a.alpha_lr, a.steps, a.reward_mean)
    for name in ("actor", "actor_target", "critic_1", "critic_1_target", "critic_2", "critic_2_target"):
        getattr(theirs, name).to(dtype)  # in place: their optimizers keep the same Parameter objects
    theirs.actor_opt_state = theirs.actor_optimizer.init(list(theirs.actor.parameters()))
    max_action = float(np.asarray(t.action_space.high).reshape(-1)[0])
    obs_dim, act_dim = buffer._states.shape[1], buffer._actions.shape[1]
    config = ASPCConfig(actor_hidden=(a.width, a.width), critic="robust", critic_width=a.width,
                        constraint=ConstraintSettings(lr=a.alpha_lr), planned_steps=a.steps, seed=a.seed)
    ours = ASPC(obs_dim, act_dim, max_action, config, dtype=dtype)
    _copy_weights(theirs.actor, list(ours.actor.parameters()), "actor")
    _copy_weights(theirs.critic_1, _member(ours.critic, 0), "critic 1")
    _copy_weights(theirs.critic_2, _member(ours.critic, 1), "critic 2")
    ours.actor_target.load_state_dict(ours.actor.state_dict())
    ours.critic_target.load_state_dict(ours.critic.state_dict())
    if a.eps_root is not None:  # ours adds 1e-16 inside Adam's sqrt (a finite derivative where a gradient entry is 0)
        ours.actor_opt = optim.adam(lr=config.actor_lr, eps_root=a.eps_root)
    ours.actor_opt_state = ours.actor_opt.init(dict(ours.actor.named_parameters()))
    coef = ours.constraint.coefficient
    with torch.no_grad():  # one rho for both: ours, in the run's dtype
        theirs.alpha.data = coef.rho.detach().clone()
    their_lr = theirs.alpha_optimizer.param_groups[0]["lr"]
    if not math.isclose(their_lr, a.alpha_lr, rel_tol=1e-12) or not math.isclose(
            theirs.alpha_scheduler.gamma, coef.gamma, rel_tol=1e-12):
        raise SystemExit(f"reference_lockstep: alpha lr/decay differ: theirs {their_lr}/{theirs.alpha_scheduler.gamma}, "
                         f"ours {a.alpha_lr}/{coef.gamma}")
    reward_mean = float(theirs.reward_mean)
    print(accelerated_op_status(), flush=True)

    # torchopt's Adam computes its bias corrections as `decay ** count` with an int64 count, i.e. in the default
    # dtype: float32 unless changed, a 1e-5 relative error in 1 - b2 at the first step. The run's dtype as default
    # makes both sides compute in the same precision (--keep-default-dtype shows the effect).
    if not a.keep_default_dtype:
        torch.set_default_dtype(dtype)
    torch.manual_seed(a.seed)
    rows, t0 = [], time.perf_counter()
    for step in range(1, a.steps + 1):
        s, act, r, s2, d = (x.to(dtype) for x in buffer.sample(a.batch_size))
        torch.set_rng_state(ours.rng.get_state())  # their randn_like draws what our generator will draw
        their_logs = theirs.train([s, act, r, s2, d])
        ours.update(Batch(s, act, r.squeeze(-1) - reward_mean, s2, d.squeeze(-1), torch.zeros_like(act),
                          torch.zeros_like(d.squeeze(-1))))  # next actions: unused by ASPC
        if "delta_Q" in their_logs:  # an alpha update happened on their side (and, in lockstep, on ours)
            a_theirs = float(torch.nn.functional.softplus(theirs.alpha.detach()))
            a_ours = float(coef.value().detach())
            rows.append({"step": step, "alpha_theirs": a_theirs, "alpha_ours": a_ours,
                         "alpha_rel_gap": abs(a_ours - a_theirs) / a_theirs,
                         "actor_rel_gap": _max_rel_gap(list(ours.actor.parameters()), theirs.actor),
                         "critic_rel_gap": max(_max_rel_gap(_member(ours.critic, 0), theirs.critic_1),
                                               _max_rel_gap(_member(ours.critic, 1), theirs.critic_2))})
    wall = time.perf_counter() - t0
    gaps = [r["alpha_rel_gap"] for r in rows]
    summary = {
        "dataset": a.dataset, "seed": a.seed, "steps": a.steps, "width": a.width, "batch_size": a.batch_size,
        "alpha_lr": a.alpha_lr, "reward_mean": a.reward_mean, "dtype": a.dtype,
        "default_dtype": str(torch.get_default_dtype()), "our_eps_root": a.eps_root if a.eps_root is not None else 1e-16, "reference_file": str(a.reference_file),
        "torchopt": accelerated_op_status(), "alpha_updates": len(rows),
        "alpha_end": {"theirs": rows[-1]["alpha_theirs"], "ours": rows[-1]["alpha_ours"]} if rows else None,
        "alpha_rel_gap_max": max(gaps) if gaps else None,
        "alpha_rel_gap_end": gaps[-1] if gaps else None,
        "actor_rel_gap_end": rows[-1]["actor_rel_gap"] if rows else None,
        "critic_rel_gap_end": rows[-1]["critic_rel_gap"] if rows else None,
        "wall_s": round(wall, 1), "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(summary, separators=(",", ":")))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
