"""What the trainer, CLI and benchmarks expect of an algorithm."""

from __future__ import annotations

from dataclasses import asdict
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from .. import optim
from ..batch import Batch
from ..nets import stack_member_optimizer_state, stack_member_tree


@runtime_checkable
class Agent(Protocol):
    """An offline RL agent: everything the trainer, config, export and plotting read of one.

    ``update`` does one gradient step (critic every step, actor on its own schedule) and
    returns detached 0-dim tensors keyed by name, so a caller converts to floats only when
    it logs (no device sync per step); ``check_finite`` raises :class:`NonFiniteError` for the
    first NaN/Inf since its last call (one host read, at log points). ``act`` maps *normalised* observations to actions.
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

    def check_finite(self) -> None: ...


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
    non-finite (empty: the batch was finite, so the networks diverged). Read the fields, not the text.
    Raised by an agent's ``check_finite()`` (see :class:`FiniteGuard`)."""

    def __init__(
        self, quantity: str, value: float, step: int, bad_fields: list[str], members: list[Any] | None = None
    ):
        self.quantity, self.value, self.step, self.bad_fields = quantity, value, step, list(bad_fields)
        self.members = members  # several seeds in one process: the seeds that had a non-finite value, earliest first
        where = (
            f"the batch has non-finite values in {self.bad_fields}" if self.bad_fields
            else "the batch is finite, so the networks diverged"
        )
        seeds = "" if members is None else f" in seed(s) {members}"
        super().__init__(f"{quantity} is {value} at update {step}{seeds}: {where}")

    @property
    def detail(self) -> str:
        return str(self).split(": ", 1)[1]


class FiniteGuard:
    """The first NaN/Inf quantity of an agent's updates, recorded on the device (no host reads).

    Each update records its quantities (losses, the hypergradient), then commits once with its
    batch: one small device computation keeps whether anything was non-finite, and for
    the first such event its quantity, value, update and a bitmask of the batch fields that were
    non-finite in that update. :meth:`check` reads that with one host transfer and raises
    :class:`NonFiniteError`. ``members``: a leading shape of independent members (several seeds
    in one process record ``(N,)`` values and batches stacked on a leading dimension).
    ``quantities``: names known in advance (a captured update must not grow the list).
    """

    def __init__(
        self, device: torch.device | str = "cpu", members: tuple[int, ...] = (), quantities: Sequence[str] = ()
    ):
        self.device, self.members = torch.device(device), tuple(members)
        self.quantities: list[str] = list(quantities)  # index -> name; new names are appended
        self._pending: list[tuple[int | Tensor, Tensor]] = []
        self._indices: dict[tuple[str, ...], Tensor] = {}  # record_all's quantity indices, by its names
        self._field_weights = 2.0 ** torch.arange(len(Batch._fields), device=self.device, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        """Forget every event (after a check, or after loading a checkpoint)."""
        # per member: [commits since reset, first event's commit (0: none), its quantity, value, field bits]
        self.record_state = torch.zeros(self.members + (5,), device=self.device, dtype=torch.float64)
        self._pending.clear()

    def record(self, quantity: str, value: Tensor) -> None:
        """Note ``value`` (a 0-dim tensor, or ``members``-shaped) under ``quantity`` for this update."""
        if quantity not in self.quantities:
            self.quantities.append(quantity)
        self._pending.append((self.quantities.index(quantity), value.detach()))

    def record_all(self, values: Mapping[str, Tensor]) -> None:
        """Note several 0-dim values with one stacked check instead of one per value (the trainer's logs);
        the first non-finite one, in the mapping's order, is the one noted."""
        names = tuple(values)
        index = self._indices.get(names)
        if index is None:
            for name in names:
                if name not in self.quantities:
                    self.quantities.append(name)
            index = torch.tensor([float(self.quantities.index(n)) for n in names], device=self.device,
                                 dtype=torch.float64)
            self._indices[names] = index
        stacked = torch.stack([v.detach().reshape(()) for v in values.values()]).to(torch.float64)
        first = (~torch.isfinite(stacked)).to(torch.uint8).argmax()  # 0 when every value is finite
        self._pending.append((index[first], stacked[first]))

    def commit(self, batch: Batch | None = None) -> None:
        """End of an update: fold its recorded quantities into the device record (``batch``: the
        update's batch, whose non-finite fields are noted; None: none to note)."""
        pending, self._pending = self._pending, []
        state = self.record_state
        count = state[..., 0] + 1
        if pending:
            quantity, value = torch.zeros_like(count), torch.zeros_like(count)
            bad = torch.zeros_like(count, dtype=torch.bool)
            for index, v in reversed(pending):  # the update's first non-finite quantity wins
                v = v.to(torch.float64).expand(self.members)
                bad_v = ~torch.isfinite(v)
                index = index if isinstance(index, Tensor) else float(index)  # record_all's is on the device
                quantity, value = torch.where(bad_v, index, quantity), torch.where(bad_v, v, value)
                bad = bad | bad_v
            bits = torch.zeros_like(count) if batch is None else self._field_bits(batch)
            event = torch.stack([count, count, quantity, value, bits], dim=-1)
            new = bad & (state[..., 1] == 0)  # and no earlier event since the last check
            state = torch.where(new.unsqueeze(-1), event, state)
        self.record_state = torch.cat([count.unsqueeze(-1), state[..., 1:]], dim=-1)

    def _field_bits(self, batch: Batch) -> Tensor:
        """``sum_f 2^f [batch field f has a NaN/Inf]`` per member."""
        dims = len(self.members)
        bad = torch.stack([~torch.isfinite(getattr(batch, f)).flatten(dims).all(dim=-1) for f in Batch._fields], -1)
        return (bad.to(torch.float64) * self._field_weights).sum(dim=-1)

    def check(self, num_updates: int, labels: Sequence[Any] | None = None) -> None:
        """Raise :class:`NonFiniteError` for the first non-finite event since the last check (one host
        read), then forget it. ``num_updates``: the agent's update count now; ``labels``: the members'
        names for the message (several seeds: the seeds)."""
        rows = self.record_state.reshape(-1, 5).tolist()
        self.reset()
        events = [(r[1], m, r) for m, r in enumerate(rows) if r[1] > 0]
        if not events:
            return
        at, member, (count, _, index, value, bits) = min(events)
        bad = [f for i, f in enumerate(Batch._fields) if int(bits) >> i & 1]
        step = num_updates - int(count) + int(at)
        where = None if labels is None else [labels[m] for _, m, _ in sorted(events)]  # earliest first
        raise NonFiniteError(self.quantities[int(index)], value, step, bad, members=where)


def record_constraint_step(guard: FiniteGuard, quantity: str, logs: dict[str, Tensor], coefficient_name: str) -> None:
    """Record a constraint step's loss as ``quantity`` and, on coefficient updates, its hypergradient."""
    guard.record(quantity, logs["loss"])
    if "hypergrad" in logs:
        guard.record(f"{coefficient_name} hypergradient", logs["hypergrad"])


class FiniteChecked:
    """An agent whose updates record their losses in ``self.finite_guard`` (made by :func:`init_agent`)."""

    finite_guard: FiniteGuard
    num_updates: int

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` for the first NaN/Inf loss or hypergradient since the last call
        (one host read: call it at log points and before checkpoints, not every update)."""
        self.finite_guard.check(self.num_updates)


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
            elif isinstance(member, torch.optim.Optimizer):  # an older checkpoint's per-critic state, stacked
                member.load_state_dict(stack_member_optimizer_state(state[k], member.param_groups))
            else:
                member.load_state_dict(state[k])
        for k, (opt, module) in self.functional_opt_states.items():
            params = dict(getattr(self, module).named_parameters())
            saved = stack_member_tree(state[k], getattr(getattr(self, module), "size", 1))
            setattr(self, k, optim.upgrade_legacy_state(getattr(self, opt), params, saved))
        self.num_updates = int(state["num_updates"])
        self.rng.set_state(state["rng"])
        self.finite_guard.reset()


class AgentBase(AgentDefaults, Checkpointed, FiniteChecked):
    """The base of the package's algorithms: the contract's defaults, ``state_dict`` over the declared
    members, and the device-side finiteness record. A subclass holds its losses and update order."""


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
    agent.finite_guard = FiniteGuard(agent.device)
    return agent.config
