"""The bilevel constraint step, independent of any particular algorithm, on :mod:`metaconstraint.hypergrad`.

An algorithm hands over an *objective*: a function ``objective(params, coef) -> Terms``
evaluated on the current batch, where ``params`` are the parameters the coefficient acts
on (the actor for TD3+BC/ReBRAC, the critic for CQL, ...). From one forward pass it
returns

* ``loss``       -- the algorithm's own loss ``L(params; coef)`` (e.g. ``coef * L_RL + L_BC``),
* ``value``      -- a scalar the step is meant to raise (e.g. mean ``Q1(s, pi(s))``); ASPC's
                    L2 penalises its change ``dQ``,
* ``constraint`` -- the per-sample constraint (e.g. ``mean_dims (pi(s) - a)^2``), shape
                    ``(batch,)``; ASPC's L3 uses its supremum ``B`` and the supremum of its change,
* ``aux``        -- optional further statistics to log (0-dim tensors).

Every inner step is :func:`metaconstraint.hypergrad.step`. Every ``every``-th one also
updates ``coef = softplus(rho)``: :func:`metaconstraint.hypergrad.unrolled` differentiates
an *outer objective* through ``horizon`` inner steps (or :func:`~metaconstraint.hypergrad.implicit`
at the current parameters), and ``rho`` takes one Adam step on that hypergradient. The
default outer objective is ASPC's (:class:`ASPCOuter`); any other can be passed.

The lookahead. The ``horizon`` inner steps of the coefficient update all use the objective
of the current step -- the same batch and the same (current) critic -- starting from the
current parameters and optimizer state. Only the first of them is a real training step:
training continues from it, exactly as with ``horizon = 1``; the others exist only to be
differentiated and are dropped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import hypergrad, optim
from .coefficient import AdaptiveCoefficient, FixedCoefficient

OUTER_TERMS = ("L1", "L2", "L3")
TERM_SETS = ("L1", "L1+L2", "L1+L3", "L1+L2+L3")
DELTA_Q = ("ema", "step")
METHODS = ("unrolled", "implicit")


class Terms(NamedTuple):
    """What an objective returns from one forward pass (see module docstring)."""

    loss: Tensor
    value: Tensor
    constraint: Tensor
    aux: Optional[dict[str, Tensor]] = None


Objective = Callable[[Mapping[str, Tensor], Tensor], Terms]


class StepResult(NamedTuple):
    params: dict[str, Tensor]  # detached, after the step
    opt_state: Any  # detached
    logs: dict[str, Tensor]  # detached 0-dim tensors


class OuterValue(NamedTuple):
    """What an outer objective returns: the loss to minimise in rho, logs, and its new memory."""

    loss: Tensor
    logs: dict[str, Tensor]
    memory: dict[str, Tensor]


class CoefficientState(NamedTuple):
    """Everything a coefficient update reads and writes (pure, so it can be vmapped over seeds)."""

    rho: Tensor
    opt_state: Any  # the coefficient's Adam state
    memory: dict[str, Tensor]  # the outer objective's memory (ASPC: the Q EMA)


def parse_terms(terms: str) -> tuple[str, ...]:
    """``"L1+L2+L3"`` -> ``("L1", "L2", "L3")``, with a readable error for anything else."""
    if terms not in TERM_SETS:
        raise ValueError(f"outer loss terms '{terms}' not understood; choose one of {', '.join(TERM_SETS)}")
    return tuple(terms.split("+"))


def terms_logs(terms: Terms) -> dict[str, Tensor]:
    """The logs of one objective evaluation: loss, value, mean constraint and the aux statistics."""
    logs = {"loss": terms.loss.detach(), "value": terms.value.detach(), "constraint": terms.constraint.detach().mean()}
    logs.update({k: v.detach() for k, v in (terms.aux or {}).items()})
    return logs


def first_order_step(
    objective: Objective,
    params: Mapping[str, Tensor],
    opt: optim.GradientTransformation,
    opt_state: Any,
    coef: Tensor,
) -> StepResult:
    """One ordinary optimizer step on ``L(params; coef)`` (no graph kept)."""
    coef = coef.detach()
    with torch.no_grad():
        s = hypergrad.step(lambda p: objective(p, coef), params, opt, opt_state)
    return StepResult(s.params, optim.detach_state(s.opt_state), terms_logs(s.output))


# ----------------------------------------------------------------------------- outer objectives


class OuterObjective:
    """Base class of outer objectives for :class:`AdaptiveConstraint`.

    ``__call__(trajectory, coef, memory) -> OuterValue``: ``trajectory`` is a
    :class:`metaconstraint.hypergrad.Trajectory` whose outputs are :class:`Terms`
    (``trajectory.outputs[0]`` before the lookahead, ``trajectory.evaluate(-1, coef.detach())``
    after it with the coefficient held constant); ``coef`` is the live coefficient;
    ``memory`` is what the previous call returned (``init_memory`` the first time).
    """

    def init_memory(self, like: Tensor) -> dict[str, Tensor]:
        return {}

    def __call__(self, trajectory: hypergrad.Trajectory, coef: Tensor, memory: dict[str, Tensor]) -> OuterValue:
        raise NotImplementedError


class FunctionOuter(OuterObjective):
    """A stateless outer objective from a function ``(trajectory, coef) -> scalar loss``."""

    def __init__(self, fn: Callable[[hypergrad.Trajectory, Tensor], Tensor]):
        self.fn = fn

    def __call__(self, trajectory: hypergrad.Trajectory, coef: Tensor, memory: dict[str, Tensor]) -> OuterValue:
        return OuterValue(self.fn(trajectory, coef), {}, memory)


@dataclass
class ASPCOuter(OuterObjective):
    """ASPC's outer loss over the lookahead, from the terms before (``outputs[0]``) and after it:

        L1 = L(p~; coef.detach())
        L2 = dQ^2                dQ: "ema" (reference code) or "step" (paper text)
        L3 = L2.detach() * B * dB,   B = max_i c_i(p) (constant), dB = max_i |c_i(p) - c_i(p~)|
    """

    terms: tuple[str, ...] = ("L1", "L2", "L3")
    delta_q: str = "ema"
    ema_decay: float = 0.995

    def __post_init__(self) -> None:
        unknown = [t for t in self.terms if t not in OUTER_TERMS]
        if unknown or not self.terms:
            raise ValueError(f"outer terms must be among {OUTER_TERMS}, got {self.terms}")
        if self.delta_q not in DELTA_Q:
            raise ValueError(f"delta_q must be one of {DELTA_Q}, got '{self.delta_q}'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")

    def init_memory(self, like: Tensor) -> dict[str, Tensor]:
        return {"q_ema": torch.zeros_like(like)}  # the reference code starts the EMA at 0

    def __call__(self, trajectory: hypergrad.Trajectory, coef: Tensor, memory: dict[str, Tensor]) -> OuterValue:
        before, after = trajectory.outputs[0], trajectory.evaluate(-1, coef.detach())
        q_ema = memory["q_ema"]
        if self.delta_q == "ema":
            new_q_ema = (1.0 - self.ema_decay) * after.value + self.ema_decay * q_ema
            delta_q = new_q_ema - q_ema
        else:
            new_q_ema = q_ema
            delta_q = after.value - before.value.detach()
        bc_before = before.constraint.detach()
        l1 = after.loss
        l2 = delta_q.pow(2)
        sup_b = bc_before.max()
        delta_b = (bc_before - after.constraint).abs().max()
        l3 = l2.detach() * sup_b * delta_b
        parts = {"L1": l1, "L2": l2, "L3": l3}
        loss = sum(parts[t] for t in self.terms)
        logs = {"L1": l1, "L2": l2, "L3": l3, "delta_q": delta_q, "B": sup_b, "delta_B": delta_b}
        return OuterValue(loss, {k: v.detach() for k, v in logs.items()}, {"q_ema": new_q_ema.detach()})


# ----------------------------------------------------------------------------- constraints


class FixedConstraint:
    """A constant coefficient: every step is first order. TD3+BC's actor step."""

    def __init__(self, coefficient: FixedCoefficient):
        self.coefficient = coefficient

    def value(self) -> Tensor:
        return self.coefficient.value()

    def step(
        self,
        objective: Objective,
        params: Mapping[str, Tensor],
        opt: optim.GradientTransformation,
        opt_state: Any,
        outer_objective: Objective | None = None,
    ) -> StepResult:
        """One first-order step (``outer_objective`` is accepted for a uniform interface, and unused)."""
        result = first_order_step(objective, params, opt, opt_state, self.coefficient.value())
        result.logs["coef"] = self.coefficient.value().detach()
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"coefficient": self.coefficient.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient.load_state_dict(state["coefficient"])


@dataclass
class ConstraintSettings:
    """Settings of the bilevel coefficient update (defaults: ASPC's single configuration).

    The same names everywhere: the fields of :class:`AdaptiveConstraintConfig` (which adds the
    starting value ``init``), and the ``constraint`` block of ``aspc`` and every ``*-adaptive``
    algorithm's config, whose starting value is the algorithm's own coefficient setting
    (``alpha``, ``beta``, ``cql_alpha``, ``actor_bc_coef``).
    """

    lr: float = 2e-3  # coefficient Adam lr at every=10; scaled by every/10 (spec)
    every: int = 10  # k_alpha: inner steps per coefficient update
    lr_decay_to: float = 0.01  # lr fraction reached after the planned number of updates
    terms: str = "L1+L2+L3"  # outer loss: L1 | L1+L2 | L1+L3 | L1+L2+L3
    delta_q: str = "ema"  # "ema" (reference code) or "step" (paper text)
    ema_decay: float = 0.995  # beta of the Q EMA for delta_q="ema"
    horizon: int = 1  # inner steps the hypergradient looks through (1: ASPC)
    method: str = "unrolled"  # "unrolled" (through `horizon` steps) or "implicit" (Neumann series)
    implicit_iters: int = 10  # Neumann terms for method="implicit"
    implicit_lr: float = 1e-2  # Neumann step size for method="implicit"

    def validate(self) -> None:
        parse_terms(self.terms)
        if self.delta_q not in DELTA_Q:
            raise ValueError(f"delta_q must be one of {DELTA_Q}, got '{self.delta_q}'")
        if self.every < 1:
            raise ValueError(f"every (k_alpha) must be >= 1, got {self.every}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.lr_decay_to <= 1.0:
            raise ValueError(f"lr_decay_to must lie in (0, 1], got {self.lr_decay_to}")
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {self.horizon!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got '{self.method}'")
        if self.method == "implicit" and self.horizon != 1:
            raise ValueError("method='implicit' differentiates at the current parameters; it takes no horizon (leave it 1)")
        if self.implicit_iters < 1 or not (math.isfinite(self.implicit_lr) and self.implicit_lr > 0):
            raise ValueError(
                f"implicit_iters must be >= 1 and implicit_lr > 0, got {self.implicit_iters}, {self.implicit_lr}"
            )


@dataclass
class AdaptiveConstraintConfig(ConstraintSettings):
    """:class:`ConstraintSettings` plus the coefficient's starting value."""

    init: float = 2.5  # starting coefficient (softplus(rho_0))


OuterLike = Union[OuterObjective, Callable[[hypergrad.Trajectory, Tensor], Tensor]]


class AdaptiveConstraint:
    """A learnable coefficient trained by the bilevel (second-order) update.

    ``outer`` is the outer objective: an :class:`OuterObjective`, or a function
    ``(trajectory, coef) -> loss``; default :class:`ASPCOuter` from the config's ``terms``,
    ``delta_q`` and ``ema_decay``. See the module docstring for the lookahead.
    """

    def __init__(
        self,
        config: AdaptiveConstraintConfig,
        planned_inner_steps: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        outer: OuterLike | None = None,
    ):
        config.validate()
        self.config = config
        if outer is None:
            outer = ASPCOuter(parse_terms(config.terms), config.delta_q, config.ema_decay)
        elif not isinstance(outer, OuterObjective):
            if not callable(outer):
                raise TypeError(f"outer must be an OuterObjective or a function (trajectory, coef) -> loss, got {outer!r}")
            outer = FunctionOuter(outer)
        self.outer = outer
        planned_updates = None if planned_inner_steps is None else max(1, planned_inner_steps // config.every)
        self.coefficient = AdaptiveCoefficient(
            init=config.init,
            lr=config.lr * config.every / 10.0,
            planned_updates=planned_updates,
            lr_decay_to=config.lr_decay_to,
            device=device,
            dtype=dtype,
        )
        self.inner_steps = 0
        self.memory = outer.init_memory(self.coefficient.rho.detach())

    def value(self) -> Tensor:
        return self.coefficient.value().detach()

    def updates_coefficient_next(self) -> bool:
        """Whether the next inner step is followed by a coefficient update."""
        return (self.inner_steps + 1) % self.config.every == 0

    @property
    def state(self) -> CoefficientState:
        return CoefficientState(self.coefficient.rho.detach(), self.coefficient.opt_state, self.memory)

    def step(
        self,
        objective: Objective,
        params: Mapping[str, Tensor],
        opt: optim.GradientTransformation,
        opt_state: Any,
        outer_objective: Objective | None = None,
    ) -> StepResult:
        """One inner step; every ``every``-th one also updates the coefficient.

        ``outer_objective``: judge the lookahead with another objective (e.g. the same loss on a
        fresh batch) instead of the inner one; the inner steps always use ``objective``.
        """
        second_order = self.updates_coefficient_next()
        self.inner_steps += 1
        if not second_order:
            result = first_order_step(objective, params, opt, opt_state, self.coefficient.value())
            result.logs["coef"] = self.value()
            return result
        new, result = self.coefficient_step(objective, params, opt, opt_state, self.state, outer_objective)
        self.coefficient.load_rho_and_state(new.rho, new.opt_state)
        self.memory = new.memory
        return result

    def hypergradient(
        self,
        objective: Objective,
        params: Mapping[str, Tensor],
        opt: optim.GradientTransformation,
        opt_state: Any,
        state: CoefficientState | None = None,
        outer_objective: Objective | None = None,
    ) -> hypergrad.Hypergrad:
        """d(outer)/d(rho) and the lookahead, without changing any state (``state`` default: the current one).

        ``grads["rho"]`` is the hypergradient; ``aux`` is ``(logs, new_memory)``; ``params`` and
        ``opt_state`` are the lookahead's iterates (index 1 is the real step). ``outer_objective``:
        see :meth:`step`.
        """
        state = self.state if state is None else state
        c = self.config

        def inner(p: Mapping[str, Tensor], h: Mapping[str, Tensor]) -> Terms:
            return objective(p, F.softplus(h["rho"]))

        def outer(traj: hypergrad.Trajectory, h: Mapping[str, Tensor]):
            coef = F.softplus(h["rho"])
            judged = traj._replace(inner=objective) if outer_objective is None else traj.judged_by(outer_objective, coef)
            value = self.outer(judged, coef, state.memory)
            return value.loss, (dict(terms_logs(traj.outputs[0]), **value.logs), value.memory)

        with torch.no_grad():  # torch.func transforms still differentiate; nothing else records a graph
            if c.method == "unrolled":
                return hypergrad.unrolled(
                    inner, outer, params, {"rho": state.rho}, opt, steps=c.horizon, opt_state=opt_state
                )
            return hypergrad.implicit(
                inner, outer, params, {"rho": state.rho}, method="neumann", iters=c.implicit_iters, lr=c.implicit_lr
            )

    def coefficient_step(
        self,
        objective: Objective,
        params: Mapping[str, Tensor],
        opt: optim.GradientTransformation,
        opt_state: Any,
        state: CoefficientState,
        outer_objective: Objective | None = None,
    ) -> tuple[CoefficientState, StepResult]:
        """The real inner step plus one coefficient update, as a pure function of its inputs.

        Returns the new coefficient state and the step; nothing on ``self`` changes, and no
        value is read back to the host for ``method="unrolled"``, so it runs under
        ``torch.func.vmap`` over stacked seeds (``method="implicit"`` checks its solver on
        the host and does not).
        """
        hg = self.hypergradient(objective, params, opt, opt_state, state, outer_objective)
        logs, memory = hg.aux
        if self.config.method == "unrolled":
            new_params, new_opt_state = hg.params[1], hg.opt_state[1]
        else:
            real = first_order_step(objective, params, opt, opt_state, F.softplus(state.rho))
            new_params, new_opt_state = real.params, real.opt_state
        grad_rho = hg.grads["rho"]
        rho, coef_opt_state = self.coefficient.update(grad_rho, state.rho, state.opt_state)
        logs.update(outer_loss=hg.outer, hypergrad=grad_rho, coef=F.softplus(rho).detach())
        return CoefficientState(rho, coef_opt_state, memory), StepResult(new_params, new_opt_state, logs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "coefficient": self.coefficient.state_dict(),
            "inner_steps": self.inner_steps,
            "memory": {k: v.clone() for k, v in self.memory.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient.load_state_dict(state["coefficient"])
        self.inner_steps = int(state["inner_steps"])
        memory = state["memory"] if "memory" in state else {"q_ema": state["q_ema"]}  # checkpoints before 0.2
        if set(memory) != set(self.memory):
            raise ValueError(
                f"checkpoint's outer-objective memory has {sorted(memory)}, this constraint's outer objective "
                f"keeps {sorted(self.memory)}: was the run made with another outer objective?"
            )
        self.memory = {k: v.to(self.memory[k]) for k, v in memory.items()}


def adaptive_constraint(
    settings: ConstraintSettings,
    init: float,
    planned_inner_steps: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    outer: OuterLike | None = None,
) -> AdaptiveConstraint:
    """The :class:`AdaptiveConstraint` that ``settings`` describe, starting at ``init``: how ``aspc`` and
    every ``*-adaptive`` algorithm build theirs (``planned_inner_steps``: the inner steps the run plans,
    over which the coefficient's lr decays; ``outer``: see :class:`AdaptiveConstraint`)."""
    own = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ConstraintSettings)}
    return AdaptiveConstraint(
        AdaptiveConstraintConfig(init=init, **own), max(1, planned_inner_steps), device=device, dtype=dtype, outer=outer
    )
