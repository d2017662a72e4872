"""ASPC (Jing et al., ICLR 2026): TD3+BC whose alpha is learned by a bilevel update.

Everything is TD3+BC (same critic step, same actor loss) except

* the robust critic (3x256, ReLU then LayerNorm, the spec's init) by default, and
* alpha = softplus(rho) is trained every ``constraint.every`` actor steps: the actor step
  theta~(alpha) = Adam(theta, grad L(theta; alpha)) is differentiated, and
  L_outer = L1 + L2 + L3 (see :mod:`metaconstraint.constraint.bilevel`) is minimised in rho.

One configuration for every dataset: these defaults (the ``constraint`` block:
:class:`metaconstraint.constraint.ConstraintSettings`, shared with the ``*-adaptive`` algorithms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..batch import Batch
from ..constraint import AdaptiveConstraint, adaptive_constraint
from .common import BILEVEL_METRICS, LearnedCoefficient
from .td3bc import TD3BC, TD3BCConfig

OUTER_BATCHES = ("same", "fresh")


@dataclass
class ASPCConfig(LearnedCoefficient, TD3BCConfig):
    """TD3+BC settings plus the ``constraint`` block of alpha's update; ``alpha`` is alpha's starting value."""

    critic: str = "robust"
    outer_batch: str = "same"  # "same" (the paper's) or "fresh": the outer loss on the previous update's batch

    def validate(self) -> None:
        super().validate()
        if self.outer_batch not in OUTER_BATCHES:
            raise ValueError(f"outer_batch must be one of {OUTER_BATCHES}, got '{self.outer_batch}'")


class ASPC(TD3BC):
    """TD3+BC with a learned alpha."""

    name = "aspc"
    Config = ASPCConfig
    metric_names = TD3BC.metric_names + BILEVEL_METRICS
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
        return adaptive_constraint(c.constraint, c.alpha, c.planned_steps // c.policy_freq, self.device, self.dtype)


__all__ = ["ASPC", "ASPCConfig"]
