"""Record golden trajectories: 200 updates of each algorithm in float64 on fixed random batches.

Run from the repository root: ``python -m tests.golden.make_golden`` (rewrites ``tests/golden/*.npz``).
``tests/test_golden.py`` replays the same runs and compares with the recorded files; an
algorithm whose numbers change must be re-recorded on purpose, with the reason in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from metaconstraint.batch import Batch

from ..test_algorithms import ACT, MAX, OBS, tiny

HERE = Path(__file__).resolve().parent
UPDATES = 200
BATCH = 24
F64 = torch.float64

# name -> (algorithm, config overrides). The adaptive ones update their coefficient every 5
# inner steps with a lr large enough that it visibly moves in 200 updates.
FAST = dict(every=5, lr=0.02)  # the constraint block
CASES: dict[str, tuple[str, dict]] = {
    "td3bc": ("td3bc", {}),
    **{
        f"aspc-{dq}-{terms.replace('+', '')}": ("aspc", dict(constraint=dict(FAST, delta_q=dq, terms=terms)))
        for dq in ("ema", "step")
        for terms in ("L1", "L1+L2", "L1+L3", "L1+L2+L3")
    },
    "iql-adaptive": ("iql-adaptive", dict(constraint=FAST)),
    "cql-adaptive": ("cql-adaptive", dict(constraint=FAST)),
    "rebrac-adaptive": ("rebrac-adaptive", dict(constraint=FAST)),
}


def tiny_agent(name: str, **overrides):
    """16-wide networks in float64, seed 0, planned for the 200 updates (obs 3, action 2, max 1.5)."""
    return tiny(name, dtype=F64, seed=0, planned_steps=UPDATES, **overrides)


def batches(n: int = UPDATES, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
        act = (torch.rand(BATCH, ACT, generator=g, dtype=F64) * 2 - 1) * 0.9 * MAX
        next_act = (torch.rand(BATCH, ACT, generator=g, dtype=F64) * 2 - 1) * 0.9 * MAX
        term = (torch.rand(BATCH, generator=g) < 0.1).to(F64)
        mask = 1 - term
        out.append(Batch(r(BATCH, OBS), act, r(BATCH) * 0.5 + 1.0, r(BATCH, OBS), term, next_act, mask))
    return out


def trajectory(case: str) -> dict[str, np.ndarray]:
    """Coefficient after every update, every log, and the final parameters of every network."""
    algo, overrides = CASES[case]
    agent = tiny_agent(algo, **overrides)
    coef, logs = [], {}
    for i, batch in enumerate(batches()):
        out = agent.update(batch)
        coef.append(float(agent.constraint.value()))
        for k, v in out.items():
            logs.setdefault(k, np.full(UPDATES, np.nan))[i] = float(v)
    rec = {"coef": np.array(coef)}
    rec.update({f"log.{k}": v for k, v in logs.items()})
    for part in ("actor", "critic", "value", "vae", "actor_target", "critic_target"):
        module = getattr(agent, part, None)
        if isinstance(module, torch.nn.Module):
            state = module.member_state_dict() if hasattr(module, "member_state_dict") else module.state_dict()
            rec.update({f"{part}.{k}": v.detach().numpy().copy() for k, v in state.items()})
    return rec


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    for case in argv or list(CASES):
        rec = trajectory(case)
        np.savez_compressed(HERE / f"{case}.npz", **rec)
        print(f"{case}: coef {rec['coef'][0]:.6f} -> {rec['coef'][-1]:.6f}, {len(rec)} arrays")


if __name__ == "__main__":
    main(sys.argv[1:])
