"""Your own outer objective: ASPC's alpha judged over a 5-step lookahead instead of one step.

ASPC's L1 reads the actor loss one Adam step ahead, a greedy signal. Here alpha's
hypergradient is taken through ``constraint.horizon=5`` actor steps (same batch, same critic) and the
outer objective is the actor loss averaged over every iterate of that lookahead, with alpha
held constant inside it (so alpha acts through the iterates only, as in ASPC's L1).
Run: ``python examples/custom_outer_objective.py --steps 20000``.
"""

import argparse
import dataclasses

import metaconstraint as mc
from metaconstraint.constraint import adaptive_constraint


def mean_loss_along_lookahead(trajectory, coef):
    """The objective's loss at iterates 1..k of the lookahead, averaged; ``coef`` held constant."""
    held = coef.detach()
    losses = [trajectory.evaluate(i, held).loss for i in range(1, len(trajectory.params))]
    return sum(losses) / len(losses)


class LookaheadASPC(mc.algos.ASPC):
    name = "aspc-lookahead"

    def _make_constraint(self):
        c = self.config
        settings = dataclasses.replace(c.constraint, horizon=5)  # the config's block, through 5 actor steps
        return adaptive_constraint(settings, c.alpha, c.planned_steps // c.policy_freq, self.device, self.dtype,
                                   outer=mean_loss_along_lookahead)


def main(steps: int = 20_000, width: int = 256, batch_size: int = 256) -> LookaheadASPC:
    data = mc.data.load("pendulum-medium")
    sampler = mc.data.Sampler(data, batch_size, normalizer=mc.data.ObsNormalizer.from_transitions(data), seed=0)
    config = mc.algos.ASPCConfig(actor_hidden=(width, width), critic_width=width, planned_steps=steps)
    agent = LookaheadASPC(data.obs_dim, data.act_dim, data.max_action, config)
    for step in range(1, steps + 1):
        logs = agent.update(sampler.sample())
        if step % max(1, steps // 5) == 0:
            print(f"step {step}: alpha {float(agent.constraint.value()):.4f}  Q {float(logs['q_mean']):.1f}")
    return agent


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    main(**vars(p.parse_args()))
