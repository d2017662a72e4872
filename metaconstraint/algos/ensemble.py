"""Several seeds of TD3+BC or ASPC in one process: parameters stacked, every update one ``vmap``.

``SeedEnsemble("aspc", seeds=[0, 1, 2], obs_dim, act_dim, ...)`` builds one ordinary agent per
seed (so each seed starts exactly where a separate run would), stacks their networks, target
networks, optimizer states and learned coefficients on a leading dimension, and runs every
update -- critic step, actor step, the coefficient's bilevel step, target updates -- as one
``torch.func.vmap`` call. Random draws still come from each seed's own generator, in the
order a separate run draws them, so seed ``i`` follows the trajectory its own run would
(tested to 1e-10 in float64 after 200 updates).

Nothing in an update reads a value back to the host: logs come back as ``(N,)`` tensors, and
non-finite losses and hypergradients are recorded on the device by the agents' own
:class:`~metaconstraint.algos.base.FiniteGuard` (one record per seed) and raised by
:meth:`check_finite`, which the caller runs at its log points. ``compile=True`` captures each
kind of update whole with :func:`~metaconstraint.algos.capture.capture` (torch.compile; CUDA
graphs on a GPU). :meth:`sync_to_agents` writes the stacked state back into the
per-seed agents (``ensemble.agents[i]``) for evaluation, checkpoints and export;
:meth:`load_from_agents` stacks them again after loading checkpoints into them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .. import hypergrad, optim
from ..hypergrad import _Carry  # tensors through a torch.func transform, other leaves beside it
from ..batch import Batch
from ..constraint import first_order_step
from .base import FiniteGuard, record_constraint_step
from .capture import capture, counts_as_ints, counts_as_tensors

SUPPORTED = ("td3bc", "aspc")


def check_supported(name: str) -> None:
    """Refuse, with a message, an algorithm several seeds in one process cannot train."""
    if name not in SUPPORTED:
        raise ValueError(
            f"several seeds in one process exist for {', '.join(SUPPORTED)}, not '{name}'; run its seeds as "
            "separate runs (metaconstraint sweep --seeds ... runs them in parallel)"
        )


def vmap_tree(fn: Callable[..., Any], *args: Any) -> Any:
    """``vmap(fn)`` over the leading dimension of every tensor in ``args``.

    Non-tensor leaves (an optimizer's step count, ``None``) are shared by all members and must
    come out of ``fn`` the same for all; they pass beside the transform, which maps tensors only.
    """
    inputs, outputs = _Carry(), _Carry()
    tensors = inputs.pack(args)

    def on_tensors(*mapped: Tensor) -> list[Tensor]:
        return outputs.pack(fn(*inputs.unpack(list(mapped))))

    return outputs.unpack(vmap(on_tensors)(*tensors))


def _stack(trees: Sequence[Any]) -> Any:
    """One tree whose tensors are the members' tensors stacked on a new leading dimension."""
    leaves = [tree_flatten(t)[0] for t in trees]
    _, spec = tree_flatten(trees[0])
    stacked = []
    for column in zip(*leaves):
        if isinstance(column[0], Tensor):
            stacked.append(torch.stack([x.detach() for x in column]))
        else:
            if any(x != column[0] for x in column):
                raise ValueError(f"the seeds' states differ in a non-tensor entry ({column}); they must be in step")
            stacked.append(column[0])
    return tree_unflatten(stacked, spec)


def _member(tree: Any, i: int) -> Any:
    return tree_map(lambda x: x[i] if isinstance(x, Tensor) else x, tree)


def _scalar_dtype() -> torch.dtype:  # torch.optim.Adam keeps its step count in this dtype
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class SeedEnsemble:
    """N independent TD3+BC or ASPC agents, one per seed, trained together (see module docstring)."""

    def __init__(
        self,
        name: str,
        seeds: Sequence[int],
        obs_dim: int,
        act_dim: int,
        max_action: float = 1.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        **overrides: Any,
    ):
        from . import make

        seeds = [int(s) for s in seeds]
        check_supported(name)
        agents = [make(name, obs_dim, act_dim, max_action, device=device, dtype=dtype, seed=s, **overrides) for s in seeds]
        self._setup(agents, compile)

    @classmethod
    def from_agents(cls, agents: Sequence[Any], compile: bool = False) -> "SeedEnsemble":
        """An ensemble over existing agents of one algorithm and settings (their current state is stacked)."""
        ensemble = cls.__new__(cls)
        ensemble._setup(list(agents), compile)
        return ensemble

    def _setup(self, agents: list[Any], compile: bool) -> None:
        """``compile``: capture every update with :func:`~metaconstraint.algos.capture.capture`."""
        seeds = [a.config.seed for a in agents]
        if not agents or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
        first = agents[0]
        check_supported(first.name)
        if any(a.name != first.name for a in agents):
            raise ValueError("several seeds in one process train one algorithm at a time")
        self.name, self.seeds, self.agents, self.compiled = first.name, seeds, agents, compile
        self.config, self.device, self.dtype, self.max_action = first.config, first.device, first.dtype, first.max_action
        self.coefficient_name = first.coefficient_name
        # torch.optim.Adam's update as a pure function (eps inside the root off, as torch has it)
        self.critic_opt = optim.adam(lr=self.config.critic_lr, eps_root=0.0)
        self._steps: dict[tuple[bool, bool, bool], Callable[..., Any]] = {}  # one (captured) update per kind
        self.load_from_agents()

    # -- stacking ---------------------------------------------------------------------------------
    @property
    def adaptive(self) -> bool:
        return hasattr(self.agents[0].constraint, "coefficient_step")

    def load_from_agents(self) -> None:
        """Stack the per-seed agents' state (after construction, or after loading checkpoints into them)."""
        agents = self.agents
        counts = {a.num_updates for a in agents}
        if len(counts) != 1:
            raise ValueError(f"the seeds' agents are at different steps {sorted(counts)}; load checkpoints of one step")
        self.num_updates = counts.pop()
        self.state: dict[str, Any] = {
            "actor": _stack([dict(a.actor.named_parameters()) for a in agents]),
            "actor_target": _stack([dict(a.actor_target.named_parameters()) for a in agents]),
            "critic": _stack([dict(a.critic.named_parameters()) for a in agents]),
            "critic_target": _stack([dict(a.critic_target.named_parameters()) for a in agents]),
            "actor_opt": _stack([a.actor_opt_state for a in agents]),
            "critic_opt": _stack([self._functional_critic_opt_state(a) for a in agents]),
        }
        if self.adaptive:
            self.state["coef"] = _stack([a.constraint.state for a in agents])
            self.inner_steps = agents[0].constraint.inner_steps
        fresh = [getattr(a, "_fresh_batch", None) for a in agents]  # ASPC outer_batch="fresh": the last batch
        self.outer_batch = None if any(b is None for b in fresh) else _stack(fresh)
        if self.compiled:
            self.state, self._count_positions = counts_as_tensors(self.state, len(agents), self.device, self.dtype)
        quantities = ("critic loss", "actor loss", f"{self.coefficient_name} hypergradient")
        self.finite_guard = FiniteGuard(self.device, members=(len(agents),), quantities=quantities)

    def _functional_critic_opt_state(self, agent: Any) -> Any:
        params = dict(agent.critic.named_parameters())
        state = self.critic_opt.init(params)
        per_param = [agent.critic_opt.state.get(p) for p in params.values()]
        if any(s for s in per_param):
            count = int(per_param[0]["step"])
            mu = {k: s["exp_avg"] for k, s in zip(params, per_param)}
            nu = {k: s["exp_avg_sq"] for k, s in zip(params, per_param)}
            state = ({}, {"count": count, "mu": mu, "nu": nu}, {"count": count})
        return state

    def sync_to_agents(self) -> None:
        """Write the stacked state into ``self.agents`` (for evaluation, checkpoints, export)."""
        state = counts_as_ints(self.state, self._count_positions) if self.compiled else self.state
        for i, agent in enumerate(self.agents):
            with torch.no_grad():
                for part in ("actor", "actor_target", "critic", "critic_target"):
                    for k, p in getattr(agent, part).named_parameters():
                        p.copy_(state[part][k][i])
            agent.actor_opt_state = _member(state["actor_opt"], i)
            adam = _member(state["critic_opt"], i)[1]
            if adam["count"] > 0:
                step = torch.tensor(float(adam["count"]), dtype=_scalar_dtype())
                for k, p in agent.critic.named_parameters():
                    agent.critic_opt.state[p] = {"step": step.clone(), "exp_avg": adam["mu"][k].clone(),
                                                 "exp_avg_sq": adam["nu"][k].clone()}  # fmt: skip
            if self.adaptive:
                coef = _member(state["coef"], i)
                agent.constraint.coefficient.load_rho_and_state(coef.rho, coef.opt_state)
                agent.constraint.memory = {k: v.clone() for k, v in coef.memory.items()}
                agent.constraint.inner_steps = self.inner_steps
            if self.outer_batch is not None:
                agent._fresh_batch = _member(self.outer_batch, i)
            agent.num_updates = self.num_updates

    # -- the update -------------------------------------------------------------------------------
    def update(self, batches: Sequence[Batch]) -> dict[str, Tensor]:
        """One gradient step of every seed, seed ``i`` on ``batches[i]``; logs are ``(N,)`` tensors."""
        if len(batches) != len(self.agents):
            raise ValueError(f"update needs one batch per seed ({len(self.agents)}), got {len(batches)}")
        self.num_updates += 1
        c = self.config
        noise = torch.stack([
            torch.randn(b.actions.shape, generator=a.rng, device=self.device, dtype=b.actions.dtype)
            for a, b in zip(self.agents, batches)
        ])  # fmt: skip
        actor_step = self.num_updates % c.policy_freq == 0
        coef_step = False
        if actor_step and self.adaptive:
            coef_step = (self.inner_steps + 1) % self.agents[0].constraint.config.every == 0
            self.inner_steps += 1
        batch = Batch(*(torch.stack(column) for column in zip(*batches)))
        outer = self.outer_batch if coef_step else None  # outer_batch="fresh": the previous update's batch
        kind = (actor_step, coef_step, outer is not None)
        if kind not in self._steps:
            step = functools.partial(self._update_all, actor_step=actor_step, coef_step=coef_step)
            self._steps[kind] = capture(step, self.device) if self.compiled else step
        self.state, logs = self._steps[kind](self.state, batch, noise, outer)
        if getattr(self.config, "outer_batch", "same") == "fresh":
            self.outer_batch = batch
        return logs

    def _update_all(self, state: dict[str, Any], batch: Batch, noise: Tensor, outer: Batch | None, actor_step: bool,
                    coef_step: bool):
        """Every seed's update (one ``vmap``) and the record of its non-finite values, pure but for the record."""
        state, logs = vmap_tree(
            lambda s, b, n, o: self._update_one(s, b, n, o, actor_step, coef_step), state, batch, noise, outer
        )
        self.finite_guard.record("critic loss", logs["critic_loss"])
        if "actor_loss" in logs:
            record_constraint_step(
                self.finite_guard, "actor loss", {"loss": logs["actor_loss"], **logs}, self.coefficient_name
            )
        self.finite_guard.commit(batch)
        return state, logs

    def check_finite(self) -> None:
        """Raise :class:`~metaconstraint.algos.base.NonFiniteError` for the earliest NaN/Inf loss or
        hypergradient of any seed since the last call, naming the seeds that had one (one host read;
        call at log points)."""
        self.finite_guard.check(self.num_updates, labels=self.seeds)

    def _update_one(self, state: dict[str, Any], batch: Batch, noise: Tensor, outer: Batch | None, actor_step: bool,
                    coef_step: bool):
        """TD3+BC's update (critic, then actor and targets every ``policy_freq``) for one seed, pure. ``outer``: the
        batch ASPC's outer loss judges the lookahead on (``outer_batch="fresh"``), or ``None`` for the step's own."""
        c, agent = self.config, self.agents[0]  # agent: the network modules and settings, not its tensors
        max_a = self.max_action
        s, a = batch.observations, batch.actions
        with torch.no_grad():
            smoothing = (noise * c.policy_noise * max_a).clamp(-c.noise_clip * max_a, c.noise_clip * max_a)
            next_a = (functional_call(agent.actor, state["actor_target"], (batch.next_observations,)) + smoothing)
            next_a = next_a.clamp(-max_a, max_a)
            target_q = agent.critic(batch.next_observations, next_a, state["critic_target"]).amin(dim=0)
            y = batch.rewards + c.discount * (1.0 - batch.terminals) * target_q

        def critic_loss(p: dict[str, Tensor]) -> Tensor:
            q1, q2 = agent.critic(s, a, p)
            return F.mse_loss(q1, y) + F.mse_loss(q2, y)

        critic = hypergrad.step(critic_loss, state["critic"], self.critic_opt, state["critic_opt"])
        new = dict(state, critic=critic.params, critic_opt=critic.opt_state)
        logs = {"critic_loss": critic.output.detach()}
        if not actor_step:
            return new, logs
        objective = agent.actor_objective(batch, critic_params=critic.params)
        if coef_step:
            outer_objective = None if outer is None else agent.actor_objective(outer, critic_params=critic.params)
            new["coef"], result = agent.constraint.coefficient_step(
                objective, state["actor"], agent.actor_opt, state["actor_opt"], state["coef"], outer_objective
            )
        else:
            coef = F.softplus(state["coef"].rho) if self.adaptive else agent.constraint.value()
            result = first_order_step(objective, state["actor"], agent.actor_opt, state["actor_opt"], coef)
            result.logs["coef"] = coef.detach()
        new["actor"], new["actor_opt"] = result.params, result.opt_state
        with torch.no_grad():
            tau = c.tau
            new["critic_target"] = {k: torch.lerp(v, new["critic"][k], tau) for k, v in state["critic_target"].items()}
            new["actor_target"] = {k: torch.lerp(v, new["actor"][k], tau) for k, v in state["actor_target"].items()}
        out = dict(result.logs)
        logs.update(actor_loss=out.pop("loss"), q_mean=out.pop("value"), bc_loss=out.pop("constraint"))
        logs[self.coefficient_name] = out.pop("coef")
        logs.update(out)
        return new, logs


class CapturedAgent:
    """A TD3+BC or ASPC agent whose every update runs as one captured function.

    ``CapturedAgent(agent)`` trains ``agent``'s networks through a one-member
    :class:`~metaconstraint.algos.ensemble.SeedEnsemble` with ``compile=True`` (the same random
    draws, from ``agent.rng``, as the eager update). ``agent`` stays the holder of the networks for
    acting, checkpoints and export: it is brought up to date before :meth:`act` and
    :meth:`state_dict`, and by :meth:`sync`. Anything else is read from ``agent``.
    """

    def __init__(self, agent: Any):
        self.agent = agent
        self.engine = SeedEnsemble.from_agents([agent], compile=True)
        self._stale = False

    def __getattr__(self, name: str) -> Any:  # config, name, metric_names, coefficient_name, ...
        if name in ("agent", "engine"):
            raise AttributeError(name)
        return getattr(self.agent, name)

    @property
    def num_updates(self) -> int:
        return self.engine.num_updates

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One captured update; the logs are 0-dim device tensors, as the agent's own."""
        logs = self.engine.update([batch])
        self._stale = True
        return {k: v[0] for k, v in logs.items()}

    def check_finite(self) -> None:
        """Raise :class:`~metaconstraint.algos.base.NonFiniteError` for the first NaN/Inf since the last call."""
        self.engine.finite_guard.check(self.engine.num_updates)

    def sync(self) -> None:
        """Write the captured state into ``self.agent``."""
        if self._stale:
            self.engine.sync_to_agents()
            self._stale = False

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        self.sync()
        return self.agent.act(observations)

    def state_dict(self) -> dict[str, Any]:
        self.sync()
        return self.agent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state)
        self.engine.load_from_agents()
        self._stale = False


__all__ = ["CapturedAgent", "SeedEnsemble", "check_supported", "vmap_tree", "SUPPORTED"]
