"""The reusable adaptive constraint: a learnable coefficient trained by a bilevel update.

Wrap any loss of the form ``coef * L_RL + L_constraint`` (or ``L_RL + coef * L_constraint``):
write ``objective(params, coef) -> Terms(loss, value, constraint)`` for one batch and call
``AdaptiveConstraint(config).step(objective, params, opt, opt_state)`` instead of an
ordinary optimizer step. The coefficient's hypergradient comes from
:mod:`metaconstraint.hypergrad` (``horizon``, ``method``, ``outer``); see
:mod:`metaconstraint.constraint.bilevel`.
"""

from .bilevel import (
    DELTA_Q,
    METHODS,
    TERM_SETS,
    AdaptiveConstraint,
    AdaptiveConstraintConfig,
    ASPCOuter,
    CoefficientState,
    ConstraintSettings,
    FixedConstraint,
    FunctionOuter,
    Objective,
    OuterObjective,
    OuterValue,
    StepResult,
    Terms,
    adaptive_constraint,
    first_order_step,
    parse_terms,
    terms_logs,
)
from .coefficient import AdaptiveCoefficient, FixedCoefficient, inverse_softplus

__all__ = [
    "ASPCOuter",
    "CoefficientState",
    "ConstraintSettings",
    "FunctionOuter",
    "METHODS",
    "OuterObjective",
    "OuterValue",
    "terms_logs",
    "AdaptiveCoefficient",
    "AdaptiveConstraint",
    "AdaptiveConstraintConfig",
    "adaptive_constraint",
    "DELTA_Q",
    "FixedCoefficient",
    "FixedConstraint",
    "Objective",
    "StepResult",
    "TERM_SETS",
    "Terms",
    "first_order_step",
    "inverse_softplus",
    "parse_terms",
]
