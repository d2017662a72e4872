"""Small pieces shared by the agents that are not TD3+BC subclasses (IQL, CQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import optim
from ..constraint import AdaptiveConstraint, AdaptiveConstraintConfig, Objective


def constraint_step(
    constraint: Any, objective: Objective, module: nn.Module, opt: optim.GradientTransformation, opt_state: dict
) -> tuple[dict, dict[str, Tensor]]:
    """One step of ``module``'s parameters through a constraint object (fixed or adaptive).

    The constraint returns the stepped parameters; they are copied into ``module`` in place.
    Returns the new optimizer state and the constraint's logs (detached 0-dim tensors).
    """
    params = dict(module.named_parameters())
    result = constraint.step(objective, params, opt, opt_state)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(result.params[k])
    return result.opt_state, dict(result.logs)


# the D4RL AntMaze datasets (keys of per-dataset presets, as metaconstraint.config.dataset_key spells them)
ANTMAZE_DATASETS = tuple(
    f"antmaze-{m}" for m in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
)

# what AdaptiveConstraint logs besides loss/value/constraint/coef (on coefficient-update steps)
BILEVEL_METRICS = ("L1", "L2", "L3", "delta_q", "B", "delta_B", "outer_loss", "hypergrad")


@dataclass
class CoefficientSettings:
    """The bilevel settings every adaptive variant shares (ASPC's single configuration).

    Mixed into a variant's config; the coefficient's starting value is the algorithm's own
    fixed coefficient field (``actor_bc_coef``, ``cql_alpha``, ``beta``).
    """

    coef_every: int = 10  # inner steps per coefficient update (k_alpha)
    coef_lr: float = 2e-3  # coefficient Adam lr at coef_every = 10; scaled by coef_every / 10
    coef_lr_decay_to: float = 0.01  # lr fraction reached after the planned number of updates
    terms: str = "L1+L2+L3"  # outer loss: L1 | L1+L2 | L1+L3 | L1+L2+L3
    delta_q: str = "ema"  # "ema" (reference code) or "step" (paper text)
    ema_decay: float = 0.995
    horizon: int = 1  # inner steps the coefficient's hypergradient looks through
    method: str = "unrolled"  # "unrolled" or "implicit"


def adaptive_constraint_from(
    config: CoefficientSettings, init: float, planned_inner_steps: int, device: Any, dtype: torch.dtype
) -> AdaptiveConstraint:
    """The :class:`AdaptiveConstraint` a variant's config describes, starting at ``init``."""
    return AdaptiveConstraint(
        AdaptiveConstraintConfig(
            init=init,
            lr=config.coef_lr,
            every=config.coef_every,
            terms=config.terms,
            delta_q=config.delta_q,
            ema_decay=config.ema_decay,
            lr_decay_to=config.coef_lr_decay_to,
            horizon=config.horizon,
            method=config.method,
        ),
        planned_inner_steps=max(1, planned_inner_steps),
        device=device,
        dtype=dtype,
    )
