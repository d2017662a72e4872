"""Record agent checkpoints in the layout before the twin critics became one vmapped ensemble.

Recorded once, with the code of commit edfb8de (two ``Critic`` modules ``critic.q1`` / ``critic.q2``
and an optimizer state per critic), by ``PYTHONPATH=<checkout of edfb8de> python -m
tests.golden.make_legacy_checkpoints``; it cannot be re-run on today's code, whose layout is the
stacked one. For each case: the agent's ``state_dict`` after ``SAVED`` golden updates
(``tests/golden/legacy/<case>.pt``, plain tensors), and what the same agent then computed over
``MORE`` further updates (``<case>.npz``: the coefficient, every log, the final parameters with the
critics named ``critic.q1.*`` / ``critic.q2.*``). ``tests/test_checkpoint_compat.py`` loads the
checkpoints into today's agents and replays the further updates.
"""

from __future__ import annotations

import numpy as np
import torch

from .make_golden import HERE, batches, tiny_agent

SAVED, MORE = 60, 40
CASES = {
    "td3bc": ("td3bc", {}),
    "aspc": ("aspc", dict(constraint=dict(every=5, lr=0.02))),
    "iql-adaptive": ("iql-adaptive", dict(constraint=dict(every=5, lr=0.02))),
    "cql-adaptive": ("cql-adaptive", dict(constraint=dict(every=5, lr=0.02))),
}
FOLDER = HERE / "legacy"


def replay(agent, batch_list) -> dict[str, np.ndarray]:
    """The coefficient and logs of ``batch_list``'s updates, then every network's parameters."""
    coef, logs = [], {}
    for i, batch in enumerate(batch_list):
        out = agent.update(batch)
        coef.append(float(agent.constraint.value()))
        for k, v in out.items():
            logs.setdefault(k, np.full(len(batch_list), np.nan))[i] = float(v)
    rec = {"coef": np.array(coef), **{f"log.{k}": v for k, v in logs.items()}}
    for part in ("actor", "critic", "value", "actor_target", "critic_target"):
        module = getattr(agent, part, None)
        if isinstance(module, torch.nn.Module):
            state = module.member_state_dict() if hasattr(module, "member_state_dict") else module.state_dict()
            rec.update({f"{part}.{k}": v.detach().numpy().copy() for k, v in state.items()})
    return rec


def main() -> None:
    torch.set_num_threads(1)
    FOLDER.mkdir(exist_ok=True)
    data = batches(SAVED + MORE)
    for case, (algo, overrides) in CASES.items():
        agent = tiny_agent(algo, **overrides)
        for batch in data[:SAVED]:
            agent.update(batch)
        torch.save(agent.state_dict(), FOLDER / f"{case}.pt")
        np.savez_compressed(FOLDER / f"{case}.npz", **replay(agent, data[SAVED:]))
        print(case, "saved")


if __name__ == "__main__":
    main()
