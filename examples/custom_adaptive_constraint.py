"""Make your own adaptive constraint: a custom ``coef * L_RL + L_constraint`` with a learned coef.

TD3+BC's critic, but the actor is pulled to the data by a Huber loss instead of a squared
error, and the RL weight ``coef`` is learned by the bilevel module (as ASPC learns alpha).
Run: ``python examples/custom_adaptive_constraint.py --steps 20000``.
"""

import argparse

import torch.nn.functional as F
from torch.func import functional_call

import metaconstraint as mc
from metaconstraint.constraint import AdaptiveConstraint, AdaptiveConstraintConfig, Terms


class HuberBC(mc.algos.TD3BC):
    name = "huber-bc-adaptive"

    def _make_constraint(self):  # the only change to make a coefficient adaptive
        c = self.config
        return AdaptiveConstraint(AdaptiveConstraintConfig(init=2.5), c.planned_steps // c.policy_freq, self.device)

    def actor_objective(self, batch):  # objective(params, coef) -> Terms(loss, value, constraint)
        s, a = batch.observations, batch.actions

        def objective(params, coef):
            pi = functional_call(self.actor, params, (s,))
            q = self.critic.q1(s, pi)
            huber = F.huber_loss(pi, a, reduction="none", delta=0.2).mean(dim=1)
            loss = -coef * q.mean() / q.abs().mean().detach() + huber.mean()
            return Terms(loss=loss, value=q.mean(), constraint=huber)

        return objective


def main(steps: int = 20_000, width: int = 256, batch_size: int = 256) -> HuberBC:
    data = mc.data.load("pendulum-medium")
    sampler = mc.data.Sampler(data, batch_size, normalizer=mc.data.ObsNormalizer.from_transitions(data), seed=0)
    config = mc.algos.TD3BCConfig(critic="robust", actor_hidden=(width, width), critic_width=width, planned_steps=steps)
    agent = HuberBC(data.obs_dim, data.act_dim, data.max_action, config)
    for step in range(1, steps + 1):
        logs = agent.update(sampler.sample())
        if step % max(1, steps // 5) == 0:
            coef, q = float(agent.constraint.value()), float(logs["q_mean"])
            print(f"step {step}: coef {coef:.4f}  Q {q:.1f}  huber {float(logs['bc_loss']):.4f}")
    return agent


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    main(**vars(p.parse_args()))
