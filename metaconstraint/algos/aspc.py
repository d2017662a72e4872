"""ASPC (Jing et al., ICLR 2026): TD3+BC whose alpha is learned by a bilevel update.

Everything is TD3+BC (same critic step, same actor loss) except

* the robust critic (3x256, ReLU then LayerNorm, the spec's init) by default, and
* alpha = softplus(rho) is trained every ``alpha_every`` actor steps: the actor step
  theta~(alpha) = Adam(theta, grad L(theta; alpha)) is differentiated, and
  L_outer = L1 + L2 + L3 (see :mod:`metaconstraint.constraint.bilevel`) is minimised in rho.

One configuration for every dataset: these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..batch import Batch
from ..constraint import AdaptiveConstraint, AdaptiveConstraintConfig
from .td3bc import TD3BC, TD3BCConfig

OUTER_BATCHES = ("same", "fresh")


@dataclass
class ASPCConfig(TD3BCConfig):
    """TD3+BC settings plus the adaptive-alpha ones; ``alpha`` is alpha's starting value."""

    critic: str = "robust"
    alpha_every: int = 10  # k_alpha: actor steps per alpha update
    alpha_lr: float = 2e-3  # at alpha_every = 10; scaled by alpha_every / 10
    alpha_lr_decay_to: float = 0.01  # lr fraction reached at planned_steps
    terms: str = "L1+L2+L3"  # outer loss ablation: L1 | L1+L2 | L1+L3 | L1+L2+L3
    delta_q: str = "ema"  # "ema" (reference implementation) or "step" (paper text)
    ema_decay: float = 0.995
    horizon: int = 1  # actor steps alpha's hypergradient looks through (1: the paper's)
    method: str = "unrolled"  # "unrolled" or "implicit" (Neumann series at the current actor)
    outer_batch: str = "same"  # "same" (the paper's) or "fresh": the outer loss on the previous update's batch

    def validate(self) -> None:
        super().validate()
        if self.outer_batch not in OUTER_BATCHES:
            raise ValueError(f"outer_batch must be one of {OUTER_BATCHES}, got '{self.outer_batch}'")


class ASPC(TD3BC):
    """TD3+BC with a learned alpha."""

    name = "aspc"
    Config = ASPCConfig
    metric_names = TD3BC.metric_names + ("L1", "L2", "L3", "delta_q", "B", "delta_B", "outer_loss", "hypergrad")
    _fresh_batch: Batch | None = None

    def update(self, batch: Batch) -> dict[str, Tensor]:
        logs = super().update(batch)
        if self.config.outer_batch == "fresh":
            self._fresh_batch = batch  # independent of the next actor step's own batch
        return logs

    def _outer_objective(self) -> Any:
        """With ``outer_batch="fresh"``: the actor loss on the previous update's batch, so the outer
        loss judges the lookahead on samples the inner step did not fit (hypothesis 3 of the
        alpha study; the paper uses the inner step's own batch)."""
        if self._fresh_batch is None:
            return None
        return self.actor_objective(self._fresh_batch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        fresh = self._fresh_batch
        state["fresh_batch"] = None if fresh is None else {f: getattr(fresh, f) for f in Batch._fields}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        fresh = state.get("fresh_batch")
        self._fresh_batch = None if fresh is None else Batch(**{f: fresh[f] for f in Batch._fields})

    def _make_constraint(self) -> AdaptiveConstraint:
        c = self.config
        return AdaptiveConstraint(
            AdaptiveConstraintConfig(
                init=c.alpha,
                lr=c.alpha_lr,
                every=c.alpha_every,
                terms=c.terms,
                delta_q=c.delta_q,
                ema_decay=c.ema_decay,
                lr_decay_to=c.alpha_lr_decay_to,
                horizon=c.horizon,
                method=c.method,
            ),
            planned_inner_steps=c.planned_steps // c.policy_freq,
            device=self.device,
            dtype=self.dtype,
        )


__all__ = ["ASPC", "ASPCConfig"]
