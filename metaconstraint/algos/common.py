"""Small pieces shared by several agents: the constraint step of IQL and CQL, the bilevel metrics, and the
``constraint`` block of the algorithms whose coefficient is learned."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .. import optim
from ..constraint import ConstraintSettings, Objective
from ..data.reference import ANTMAZE_DATASETS  # noqa: F401  (moved to the data package; still importable here)


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


# what AdaptiveConstraint logs besides loss/value/constraint/coef (on coefficient-update steps)
BILEVEL_METRICS = ("L1", "L2", "L3", "delta_q", "B", "delta_B", "outer_loss", "hypergrad")


@dataclass
class LearnedCoefficient:
    """Mixed into the config of ``aspc`` and every ``*-adaptive`` algorithm (listed before the base
    config): the ``constraint`` block, the coefficient update's settings by their
    :class:`~metaconstraint.constraint.ConstraintSettings` names. The coefficient starts at the
    algorithm's own coefficient setting (``alpha``, ``beta``, ``cql_alpha``, ``actor_bc_coef``).
    The block may be given as a mapping: ``make("aspc", ..., constraint={"lr": 0.25})``.
    """

    constraint: ConstraintSettings = field(default_factory=ConstraintSettings)

    def __post_init__(self) -> None:
        # always an own copy, so that dataclasses.replace(config) shares nothing mutable with config
        if isinstance(self.constraint, Mapping):
            self.constraint = ConstraintSettings(**self.constraint)
        else:
            self._check_block()
            self.constraint = dataclasses.replace(self.constraint)

    def _check_block(self) -> None:
        if not isinstance(self.constraint, ConstraintSettings):
            raise TypeError(f"constraint must be ConstraintSettings or a mapping of its fields, not {self.constraint!r}")

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]  # the algorithm's own checks
        self._check_block()
        self.constraint.validate()
