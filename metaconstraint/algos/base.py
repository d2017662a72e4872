"""What the trainer, CLI and benchmarks expect of an algorithm."""

from __future__ import annotations

from dataclasses import asdict
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .. import optim
from ..batch import Batch


@runtime_checkable
class Agent(Protocol):
    """An offline RL agent: everything the trainer, config, export and plotting read of one.

    ``update`` does one gradient step (critic every step, actor on its own schedule) and
    returns detached 0-dim tensors keyed by name, so a caller converts to floats only when
    it logs (no device sync per step). ``act`` maps *normalised* observations to actions.
    ``state_dict`` holds everything needed to resume exactly, as tensors, numbers, strings
    and nested dicts/lists of them (loadable with ``torch.load(weights_only=True)``).
    The class-level members an algorithm may leave out have defaults in :class:`AgentDefaults`.
    """

    name: ClassVar[str]  # the CLI name (``aspc``); checkpoints record it
    Config: ClassVar[type]  # the settings dataclass (``seed``, learning rates, ...; ``validate()``)
    metric_names: ClassVar[tuple[str, ...]]  # the keys ``update`` logs: the metrics.csv columns
    coefficient_name: ClassVar[str]  # the log key of the constraint coefficient (``alpha``, ``beta``)
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]  # per-dataset settings (published tuning), by dataset key
    batch_size: ClassVar[int]  # the minibatch size a preset without its own uses
    config: Any
    num_updates: int  # gradient steps done so far
    actor: nn.Module  # the policy network (export uses it as the policy when it returns what ``act`` does)
    constraint: Any  # the actor's constraint object; ``constraint.value()`` is the coefficient now

    def update(self, batch: Batch) -> dict[str, Tensor]: ...

    def act(self, observations: Tensor) -> Tensor: ...

    def export_module(self) -> nn.Module | None:
        """The policy as a module for ``metaconstraint export`` (normalised observations to actions), or
        None to let export use ``actor`` or trace ``act``."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AgentDefaults:
    """The defaults of the :class:`Agent` members an algorithm need not set: no per-dataset presets, the
    presets' batch size, ``alpha`` as the coefficient's log key, and no export module of its own."""

    coefficient_name: ClassVar[str] = "alpha"
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType({})
    batch_size: ClassVar[int] = 256

    def export_module(self) -> nn.Module | None:
        return None


class NonFiniteError(FloatingPointError):
    """A loss became NaN/Inf: which quantity, its value, the update, and the batch fields that were
    non-finite (empty: the batch was finite, so the networks diverged). Read the fields, not the text."""

    def __init__(self, quantity: str, value: float, step: int, bad_fields: list[str]):
        self.quantity, self.value, self.step, self.bad_fields = quantity, value, step, list(bad_fields)
        where = (
            f"the batch has non-finite values in {self.bad_fields}" if self.bad_fields
            else "the batch is finite, so the networks diverged"
        )
        super().__init__(f"{quantity} is {value} at update {step}: {where}")

    @property
    def detail(self) -> str:
        return str(self).split(": ", 1)[1]


def check_finite(name: str, value: Tensor, step: int, batch: Batch) -> None:
    """Raise :class:`NonFiniteError` if ``value`` is NaN/Inf (one host read per call)."""
    if torch.isfinite(value).all():
        return
    bad = [f for f in Batch._fields if not torch.isfinite(getattr(batch, f)).all()]
    raise NonFiniteError(name, value.item(), step, bad)


def named_constraint_logs(logs: dict[str, Tensor], loss: str, value: str, constraint: str, coef: str) -> dict[str, Tensor]:
    """A constraint step's logs under the algorithm's names (``loss``, ``value``, ``constraint``,
    ``coef`` renamed; the bilevel terms and the objective's own statistics kept as they are)."""
    out = dict(logs)
    renamed = {loss: out.pop("loss"), value: out.pop("value"), constraint: out.pop("constraint"), coef: out.pop("coef")}
    return {**renamed, **out}


class Checkpointed:
    """``state_dict`` / ``load_state_dict`` over the members an agent declares.

    ``checkpointed``: attribute names of modules, ``torch.optim`` optimizers, constraint objects
    (saved by their own ``state_dict``) and tensors (saved as a copy); ``functional_opt_states``:
    ``{state attribute: (optimizer attribute, module attribute)}`` for functional optimizer
    states, checked against the module's parameters (and upgraded from older formats) on load.
    The checkpoint's keys are the attribute names, plus ``algo``, ``config``, ``num_updates``
    and ``rng`` (the agent's own generator).
    """

    checkpointed: ClassVar[tuple[str, ...]] = ()
    functional_opt_states: ClassVar[dict[str, tuple[str, str]]] = {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"algo": self.name, "config": asdict(self.config)}
        for k in self.checkpointed:
            member = getattr(self, k)
            state[k] = member.detach().clone() if isinstance(member, Tensor) else member.state_dict()
        for k in self.functional_opt_states:
            state[k] = optim.detach_state(getattr(self, k))
        state.update(num_updates=self.num_updates, rng=self.rng.get_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algo") != self.name:
            raise ValueError(f"checkpoint is for algorithm '{state.get('algo')}', not '{self.name}'")
        for k in self.checkpointed:
            member = getattr(self, k)
            if isinstance(member, Tensor):
                with torch.no_grad():
                    member.copy_(state[k])
            else:
                member.load_state_dict(state[k])
        for k, (opt, module) in self.functional_opt_states.items():
            params = dict(getattr(self, module).named_parameters())
            setattr(self, k, optim.upgrade_legacy_state(getattr(self, opt), params, state[k]))
        self.num_updates = int(state["num_updates"])
        self.rng.set_state(state["rng"])


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau source`` for every parameter."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def init_agent(
    agent: Any, obs_dim: int, act_dim: int, max_action: float, config: Any, device: Any, dtype: torch.dtype
) -> Any:
    """The constructor preamble every agent shares: default and validated config, device,
    dtype and sizes set on ``agent``. Returns the config."""
    agent.config = config if config is not None else agent.Config()
    agent.config.validate()
    agent.device, agent.dtype = torch.device(device), dtype
    agent.obs_dim, agent.act_dim, agent.max_action = obs_dim, act_dim, float(max_action)
    return agent.config
