"""Hypergradients: the derivative of an outer objective through an inner optimisation.

Setting. Inner parameters ``params`` (``dict[str, Tensor]``) are trained on
``inner(params, hparams)``, which returns a scalar loss or an object with a ``.loss`` field
(e.g. :class:`metaconstraint.constraint.Terms`). The outer objective judges the whole
run: ``outer(trajectory, hparams)`` gets a :class:`Trajectory` -- the iterates
``params_0 .. params_k``, the optimizer states, and what ``inner`` returned at each
iterate -- and returns a scalar (or ``(scalar, aux)``). This module returns
``d outer / d hparams``:

* :func:`step` -- one optimizer step, the single building block every caller uses (the
  adaptive constraint, :func:`unrolled`, the agents' first-order steps, the benchmarks);
* :func:`unrolled` -- differentiate through ``k`` steps, optionally only the last ``t``;
* :func:`implicit` -- implicit function theorem at an inner optimum (CG or Neumann);
* :func:`check` -- central finite differences in float64, to test either of the above.

What the outer objective sees. ``trajectory.outputs[i]`` is ``inner(params_i, hparams)``,
evaluated when ``outer`` first reads it (``outputs[0]`` reuses the forward pass of the first
step), so the result is the true derivative of what ``outer`` returns (:func:`check` tests
exactly that). ``trajectory.evaluate(i, other_hparams)`` evaluates the inner objective at
iterate ``i`` with other hparams, e.g. detached ones, for a semi-gradient in which the
hparams act through the iterates only (ASPC's L1 reads ``coef * L_RL + L_BC`` at the
last iterate with ``coef`` held constant).

Three unrolled backends compute the same quantity and are tested to agree (<= 1e-10 in
float64):

``"func"``   reverse-over-reverse: inner gradients that keep their graph, then one backward
             pass to the hparams. Plain autograd (``create_graph``) when called directly;
             nested ``torch.func.grad`` when called inside a ``torch.func`` transform, so it
             also runs under ``torch.func.vmap`` (several seeds at once). Memory grows with
             ``steps``.
``"higher"`` the same steps run by the ``higher`` library's differentiable
             ``torch.optim`` optimizers, an independent cross-check. Needs an optimizer
             with a ``torch_equivalent`` (:func:`metaconstraint.optim.adam`, ``sgd``).
``"jvp"``    forward-over-reverse: ``torch.func.jvp`` of :func:`step` carries the tangent
             ``d params / d h`` through the steps, one pass per scalar hparam element, and
             keeps no graph between steps, so memory does not grow with ``steps``. Meant
             for a few scalars such as a constraint coefficient.

Conventions: the optimizer is a :class:`metaconstraint.optim.GradientTransformation` or a
function ``hparams -> GradientTransformation`` (to differentiate the inner learning rate,
betas or weight decay: ``opt=lambda h: optim.adam(lr=h["lr"])``). A parameter the inner loss
does not use gets a zero gradient; an hparam the outer objective cannot reach gets a zero
hypergradient (``torch.func``'s convention); in :func:`unrolled`, an outer loss that *no*
hparam reaches is an error.
The initial ``params`` and ``opt_state`` are constants.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .optim import GradientTransformation, Params, State, apply_updates, check_state, check_tree, step_count

InnerFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Any]
OuterFn = Callable[["Trajectory", Mapping[str, Tensor]], Any]
OptLike = Union[GradientTransformation, Callable[[Mapping[str, Tensor]], GradientTransformation]]

__all__ = ["Step", "Trajectory", "Hypergrad", "step", "unrolled", "implicit", "check", "BACKENDS", "METHODS"]

BACKENDS = ("func", "higher", "jvp")
METHODS = ("cg", "neumann")


# ----------------------------------------------------------------------------- results


class Step(NamedTuple):
    """One optimizer step: the new params and state, and what the loss function returned before it."""

    params: Params
    opt_state: State
    output: Any


class Trajectory(NamedTuple):
    """The iterates of an inner run (``k + 1`` of them) and the inner objective at each.

    ``outputs[i]`` is ``inner(params[i], hparams)``, evaluated on first access. For
    :func:`implicit` the trajectory is ``(params*, params*(h))``: the optimum as a constant,
    then as the differentiable function of the hparams.
    """

    params: tuple[Params, ...]
    opt_states: tuple[State, ...]
    outputs: Sequence
    inner: InnerFn

    def evaluate(self, i: int, hparams: Mapping[str, Tensor]) -> Any:
        """The inner objective at iterate ``i`` with the given hparams (e.g. detached ones)."""
        return self.inner(self.params[i], hparams)

    def judged_by(self, fn: Callable[[Mapping[str, Tensor], Any], Any], hparams: Any) -> "Trajectory":
        """The same iterates judged by another objective ``fn(params, hparams)`` (e.g. on a fresh
        batch): its ``outputs`` and ``evaluate`` come from ``fn``, evaluated on first access."""
        return _trajectory(fn, self.params, self.opt_states, hparams)


class Hypergrad(NamedTuple):
    """What :func:`unrolled` and :func:`implicit` return (all tensors detached).

    ``grads``: ``hparam name -> d outer / d hparam``; ``outer``: the outer loss; ``aux``: what
    ``outer`` returned beside it (or ``None``); ``params`` / ``opt_state``: the iterates and
    optimizer states of the run (``k + 1`` each; for :func:`implicit` the optimum and
    ``None``); ``info``: diagnostics (backend or method, steps, solver residual, ...).
    """

    grads: dict[str, Tensor]
    outer: Tensor
    aux: Any
    params: tuple[Params, ...]
    opt_state: tuple[State, ...]
    info: dict[str, Any]

    @property
    def final_params(self) -> Params:
        return self.params[-1]


class _LazyOutputs(Sequence):
    """``outputs[i] = evaluate(i)``, computed once, on first access."""

    def __init__(self, evaluate: Callable[[int], Any], n: int, known: Optional[dict[int, Any]] = None):
        self._evaluate, self._n, self._cache = evaluate, n, dict(known or {})

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        j = i + self._n if i < 0 else i
        if not 0 <= j < self._n:
            raise IndexError(f"trajectory has {self._n} iterates, index {i} is out of range")
        if j not in self._cache:
            self._cache[j] = self._evaluate(j)
        return self._cache[j]


# ----------------------------------------------------------------------------- validation


def _check_tensor_dict(d: Any, what: str) -> None:
    if not isinstance(d, Mapping) or not d:
        raise TypeError(f"{what} must be a non-empty dict[str, Tensor], got {type(d).__name__}")
    for k, v in d.items():
        if not isinstance(k, str):
            raise TypeError(f"{what}: keys must be str, got {k!r}")
        if not isinstance(v, Tensor):
            raise TypeError(f"{what}['{k}'] must be a Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"{what}['{k}'] must be a floating-point tensor, got {v.dtype}")


def _scalar(value: Any, fn_name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn_name} must return a scalar Tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"{fn_name} must return a scalar (0-dim) tensor, got shape {tuple(value.shape)}; "
            "reduce it with .mean() or .sum()"
        )
    return value.reshape(())


def _loss_of(output: Any, fn_name: str = "inner_loss") -> Tensor:
    """The scalar loss in what a loss function returned: the tensor itself or its ``.loss``."""
    if isinstance(output, Tensor):
        return _scalar(output, fn_name)
    loss = getattr(output, "loss", None)
    if loss is None:
        raise TypeError(
            f"{fn_name} must return a scalar Tensor or an object with a .loss field (e.g. Terms), "
            f"got {type(output).__name__}"
        )
    return _scalar(loss, f"{fn_name}'s .loss")


def _outer_value(value: Any) -> tuple[Tensor, Any]:
    if isinstance(value, tuple) and len(value) == 2:
        return _scalar(value[0], "outer_loss"), value[1]
    return _scalar(value, "outer_loss"), None


def _resolve_opt(opt: OptLike, hparams: Mapping[str, Tensor]) -> GradientTransformation:
    if isinstance(opt, GradientTransformation):
        return opt
    if callable(opt):
        built = opt(hparams)
        if isinstance(built, GradientTransformation):
            return built
        raise TypeError(f"opt(hparams) must return a GradientTransformation, got {type(built).__name__}")
    raise TypeError(
        "opt must be a metaconstraint.optim.GradientTransformation or a function hparams -> GradientTransformation, "
        f"got {type(opt).__name__}"
    )


def _no_path_error(where: str) -> ValueError:
    return ValueError(
        f"no hparam reaches the outer loss {where}: it depends on the hparams neither directly nor through the "
        "params (a hyper-parameter that only adds a constant to the inner loss cannot change the params). Check that "
        "inner_loss / outer_loss use the hparams"
    )


class _Carry:
    """Carries a nest with non-tensor leaves (ints, None) out of a ``torch.func`` transform,
    whose outputs must be tensors: the tensors go through the transform, the rest beside it."""

    def pack(self, tree: Any) -> list[Tensor]:
        leaves, self._spec = tree_flatten(tree)
        self._leaves = leaves
        return [x for x in leaves if isinstance(x, Tensor)]

    def unpack(self, tensors: list[Tensor]) -> Any:
        it = iter(tensors)
        return tree_unflatten([next(it) if isinstance(x, Tensor) else x for x in self._leaves], self._spec)


def _detached(tree: Any) -> Any:
    return tree_map(lambda x: x.detach() if isinstance(x, Tensor) else x, tree)


# ----------------------------------------------------------------------------- the step


def step(
    loss_fn: Callable[[Mapping[str, Tensor]], Any],
    params: Mapping[str, Tensor],
    opt: GradientTransformation,
    opt_state: State,
) -> Step:
    """One optimizer step on ``loss_fn(params)`` (a scalar, or an object with ``.loss``).

    Pure, and differentiable in whatever ``loss_fn`` closes over, by the AD in use:

    * inside a ``torch.func`` transform (grad, jvp, vmap) the gradient is a ``torch.func.grad``;
    * outside, with autograd's grad mode on, it is ``torch.autograd.grad(create_graph=True)``,
      so plain autograd differentiates the new params (the faster, leaner path on CPU);
    * outside with grad mode off (``torch.no_grad()``), an ordinary first-order step whose
      results carry no graph.

    A parameter ``loss_fn`` does not use gets a zero gradient.
    """
    if _transform_active():

        def loss_and_output(p: Mapping[str, Tensor]) -> tuple[Tensor, Any]:
            output = loss_fn(p)
            return _loss_of(output), carry.pack(output)

        carry = _Carry()
        grads, packed = grad(loss_and_output, has_aux=True)(dict(params))
        output = carry.unpack(packed)
    else:
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = {k: v if differentiable and v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
            output = loss_fn(leaves)
            found = torch.autograd.grad(
                _loss_of(output), list(leaves.values()), create_graph=differentiable, allow_unused=True
            )
        grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), found)}
        if differentiable:
            params = leaves
        else:
            output, params = _detached(output), _detached(dict(params))
    updates, new_state = opt.update(grads, opt_state, params)
    new_params = apply_updates(params, updates)
    return Step(new_params, new_state, output)


def _transform_active() -> bool:
    """Whether a ``torch.func`` transform (grad, jvp, vmap) is running around this call."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # torch internals moved: the transform path is always correct
        return True


def _plain_steps(inner: InnerFn, params: Params, hparams: Params, opt: OptLike, state: State, n: int):
    """``n`` steps with the hparams held constant (the truncated, first-order part)."""
    hp = _detached(hparams)
    o = _resolve_opt(opt, hp)
    iterates, states = [params], [state]
    with torch.no_grad():
        for _ in range(n):
            s = step(lambda p: inner(p, hp), iterates[-1], o, states[-1])
            iterates.append(s.params)
            states.append(s.opt_state)
    return iterates, states


def _trajectory(inner: InnerFn, iterates, states, hparams, known: Optional[dict[int, Any]] = None) -> Trajectory:
    iterates, states = tuple(iterates), tuple(states)
    outputs = _LazyOutputs(lambda j: inner(iterates[j], hparams), len(iterates), known)
    return Trajectory(iterates, states, outputs, inner)


# ----------------------------------------------------------------------------- unrolled


def _unroll_func(inner, outer, prefix, hparams, opt, steps):
    """Reverse-over-reverse: plain autograd at top level, ``torch.func.grad`` inside a transform."""
    iterates0, states0 = prefix

    def run(h: Params):
        o = _resolve_opt(opt, h)
        iterates, states, known = list(iterates0), list(states0), {}
        for i in range(steps):
            s = step(lambda p: inner(p, h), iterates[-1], o, states[-1])
            if i == 0:
                known[len(iterates) - 1] = s.output  # the first step's forward pass, reused
            iterates.append(s.params)
            states.append(s.opt_state)
        loss, aux = _outer_value(outer(_trajectory(inner, iterates, states, h, known), h))
        return loss, aux, iterates, states

    where = f"in the {steps} differentiated step(s)"
    if _transform_active():  # e.g. under torch.func.vmap: stay inside torch.func

        def outer_of(h: Params):
            loss, aux, iterates, states = run(h)
            if not loss.requires_grad:
                raise _no_path_error(where)
            return loss, (loss, carry.pack((aux, tuple(iterates), tuple(states))))

        carry = _Carry()
        grads, (loss, packed) = grad(outer_of, has_aux=True)(hparams)
        aux, iterates, states = carry.unpack(packed)
        return grads, loss, aux, iterates, states

    h = {k: v.detach().requires_grad_() for k, v in hparams.items()}
    with torch.enable_grad():
        loss, aux, iterates, states = run(h)
        found = torch.autograd.grad(loss, list(h.values()), allow_unused=True) if loss.requires_grad else [None] * len(h)
    if all(g is None for g in found):
        raise _no_path_error(where)
    grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(h.items(), found)}
    return grads, loss, aux, tuple(iterates), tuple(states)


@functools.cache
def _quiet_forward_ad_setup() -> None:
    """Load torch's forward-AD decompositions once, hiding the deprecation warning torch's own
    internals raise while scripting them (a message about torch, not about the user's code)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=DeprecationWarning)
        jvp(torch.sin, (torch.zeros(()),), (torch.ones(()),))
        jvp(lambda x: grad(lambda y: (y * y).sum())(x), (torch.zeros(2),), (torch.ones(2),))


def _unroll_jvp(inner, outer, prefix, hparams, opt, steps):
    _quiet_forward_ad_setup()
    iterates0, states0 = prefix
    base = _detached(hparams)
    p_start, s_start = iterates0[-1], states0[-1]
    s_leaves, s_spec = tree_flatten(s_start)
    is_tensor = [isinstance(x, Tensor) for x in s_leaves]

    def unflatten_state(tensors: list[Tensor], statics: list[Any]) -> State:
        it = iter(tensors)
        return tree_unflatten([next(it) if t else s for t, s in zip(is_tensor, statics)], s_spec)

    # Forward mode through the steps, one pass per hparam element: the tangents of the iterates.
    directions: list[tuple[str, int, list[Params]]] = []
    primal_iterates: list[Params] = []
    primal_states: list[State] = []
    for name, value in base.items():
        for j in range(value.numel()):
            e = {k: torch.zeros_like(v) for k, v in base.items()}
            e[name].view(-1)[j] = 1.0
            p, p_dot = p_start, {k: torch.zeros_like(v) for k, v in p_start.items()}
            statics = list(s_leaves)
            s_t = [x for x, t in zip(s_leaves, is_tensor) if t]
            s_dot = [torch.zeros_like(x) for x in s_t]
            iterates, states, tangents = [], [], []
            for _ in range(steps):
                new_statics: list[Any] = []

                def one(p_, s_, h_, statics=statics, new_statics=new_statics):
                    s = step(lambda q: inner(q, h_), p_, _resolve_opt(opt, h_), unflatten_state(s_, statics))
                    leaves, _ = tree_flatten(s.opt_state)
                    new_statics.extend(leaves)
                    return s.params, [x for x, t in zip(leaves, is_tensor) if t]

                (p, s_t), (p_dot, s_dot) = jvp(one, (p, s_t, base), (p_dot, s_dot, e))
                statics = new_statics
                iterates.append(p)
                states.append(unflatten_state(s_t, statics))
                tangents.append(p_dot)
            directions.append((name, j, tangents))
            if not primal_iterates:
                primal_iterates, primal_states = iterates, states

    # Reverse mode once, at the iterates as leaves: d outer = sum_i grad_{p_i} outer . p_dot_i + d_h outer.
    leaves = [{k: v.detach().requires_grad_() for k, v in p.items()} for p in primal_iterates]
    all_iterates = list(iterates0) + leaves
    h_leaf = {k: v.clone().requires_grad_() for k, v in base.items()}
    traj = _trajectory(inner, all_iterates, list(states0) + list(primal_states), h_leaf)
    with torch.enable_grad():
        loss, aux = _outer_value(outer(traj, h_leaf))
        wrt = [t for p in leaves for t in p.values()] + list(h_leaf.values())
        d = torch.autograd.grad(loss, wrt, allow_unused=True)
    d_iter, pos = [], 0
    for p in leaves:
        d_iter.append({k: d[pos + i] for i, k in enumerate(p)})
        pos += len(p)
    d_h = dict(zip(h_leaf, d[pos:]))
    # forward mode cannot tell a missing path from a zero tangent: no path = all tangents exactly 0
    if all(g is None for g in d_h.values()) and not any(
        bool(t.any()) for _, _, tangents in directions for p_dot in tangents for t in p_dot.values()
    ):
        raise _no_path_error(f"in the {steps} differentiated step(s)")
    grads = {k: torch.zeros_like(v).reshape(-1) for k, v in base.items()}
    for name, j, tangents in directions:
        total = torch.zeros((), dtype=base[name].dtype, device=base[name].device)
        for d_p, p_dot in zip(d_iter, tangents):
            for k, t in p_dot.items():
                if d_p[k] is not None:
                    total = total + (d_p[k] * t).sum()
        if d_h[name] is not None:
            total = total + d_h[name].reshape(-1)[j]
        grads[name][j] = total
    grads = {k: g.view_as(base[k]) for k, g in grads.items()}
    return grads, loss, aux, tuple(all_iterates), traj.opt_states


def _unroll_higher(inner, outer, prefix, hparams, opt, steps):
    import higher  # imported here: only this backend needs it

    iterates0, states0 = prefix
    p_start, s_start = iterates0[-1], states0[-1]
    h = {k: v.detach().requires_grad_() for k, v in hparams.items()}
    o = _resolve_opt(opt, h)
    if o.torch_equivalent is None:
        raise ValueError(
            "backend='higher' needs an optimizer with a torch.optim equivalent (metaconstraint.optim.adam or sgd); "
            "this chain has none: use backend='func' or 'jvp'"
        )
    te = o.torch_equivalent
    names = list(p_start)
    holder = _ParamHolder()  # parameter names p0, p1, ...: dict keys may contain '.'
    torch_params = []
    for i, n in enumerate(names):
        param = torch.nn.Parameter(p_start[n].detach().clone())
        holder.register_parameter(f"p{i}", param)
        torch_params.append(param)
    count0 = step_count(s_start)
    topt = te.build(torch_params, names, s_start)
    iterates, states = list(iterates0), list(states0)
    with torch.enable_grad(), higher.innerloop_ctx(holder, topt, copy_initial_weights=False) as (fmodel, diffopt):
        for i in range(steps):
            fast = dict(zip(names, fmodel.fast_params))
            loss = _loss_of(inner(fast, h))
            diffopt.step(loss, override=te.overrides(count0 + i), grad_callback=_zeros_for_unused(fast, names))
            iterates.append(dict(zip(names, fmodel.fast_params)))
            states.append(te.read_state([diffopt.state[0][k] for k in range(len(names))], names, count0 + i + 1))
        traj = _trajectory(inner, iterates, states, h)
        loss, aux = _outer_value(outer(traj, h))
        gs = torch.autograd.grad(loss, list(h.values()), allow_unused=True) if loss.requires_grad else [None] * len(h)
        if all(g is None for g in gs):
            raise _no_path_error(f"in the {steps} differentiated step(s)")
    grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(h.items(), gs)}
    return grads, loss, aux, tuple(iterates), tuple(states)


def _zeros_for_unused(fast: Params, names: list[str]):
    def callback(all_grads):
        return [torch.zeros_like(fast[n]) if g is None else g for n, g in zip(names, all_grads)]

    return callback


class _ParamHolder(torch.nn.Module):
    """An ``nn.Module`` that only holds parameters ``p0, p1, ...`` (for the ``higher`` backend).

    A subclass because higher derives a patched class from the module's own class, which
    fails for a bare ``torch.nn.Module``.
    """


_UNROLLERS = {"func": _unroll_func, "higher": _unroll_higher, "jvp": _unroll_jvp}


def unrolled(
    inner_loss: InnerFn,
    outer_loss: OuterFn,
    params: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    opt: OptLike,
    steps: int = 1,
    opt_state: Optional[State] = None,
    backend: str = "func",
    truncate: Optional[int] = None,
) -> Hypergrad:
    """Hypergradient through ``steps`` inner optimizer steps.

    Runs ``params_{i+1} = step(inner_loss(., hparams), params_i)`` for ``steps`` steps and
    returns ``d outer_loss(trajectory, hparams) / d hparams``.

    Args:
        inner_loss: ``(params, hparams) -> scalar Tensor`` or an object with ``.loss``.
        outer_loss: ``(trajectory, hparams) -> scalar Tensor`` or ``(scalar, aux)``; read
            ``trajectory.params[-1]`` for the final params, ``trajectory.outputs[i]`` for
            the inner objective at iterate ``i`` (hparams held constant there).
        params: initial inner params (treated as constants).
        hparams: hyper-parameters to differentiate (floating tensors of any shape).
        opt: a :class:`~metaconstraint.optim.GradientTransformation`, or a function of the
            hparams returning one (to differentiate its lr, betas, weight decay).
        steps: number of inner steps ``k >= 1``.
        opt_state: optimizer state to start from (default ``opt.init(params)``).
        backend: ``"func"``, ``"higher"`` or ``"jvp"`` (see the module docstring).
        truncate: differentiate only through the last ``t`` steps (``1 <= t <= k``); the
            first ``k - t`` steps run with the hparams held constant.
    """
    if backend not in _UNROLLERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if truncate is None:
        truncate = steps
    if not isinstance(truncate, int) or not 1 <= truncate <= steps:
        raise ValueError(f"truncate must be an int in [1, steps={steps}], got {truncate!r}")
    _check_tensor_dict(params, "params")
    _check_tensor_dict(hparams, "hparams")
    params = _detached(dict(params))
    hparams = _detached(dict(hparams))
    o = _resolve_opt(opt, hparams)
    expected = o.init(params)
    state = expected if opt_state is None else _detached(opt_state)
    check_state(expected, state)
    prefix = _plain_steps(inner_loss, params, hparams, opt, state, steps - truncate)
    grads, loss, aux, iterates, states = _UNROLLERS[backend](inner_loss, outer_loss, prefix, hparams, opt, truncate)
    info = {"backend": backend, "steps": steps, "truncate": truncate}
    return Hypergrad(_detached(grads), loss.detach(), _detached(aux), _detached(iterates), _detached(states), info)


# ----------------------------------------------------------------------------- implicit


def _tree_dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def _tree_axpy(alpha: Any, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Params:
    return {k: alpha * x[k] + y[k] for k in x}


def implicit(
    inner_loss: InnerFn,
    outer_loss: OuterFn,
    params_at_optimum: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    method: str = "cg",
    iters: int = 50,
    damping: float = 0.0,
    lr: float = 1e-2,
    tol: float = 1e-10,
) -> Hypergrad:
    """Implicit-function-theorem hypergradient at an inner optimum ``params*(hparams)``.

    ``d outer/d h = d_h outer - (d^2 inner / d h d params) (H + damping I)^{-1} d_params outer``
    with ``H`` the Hessian of the inner loss at ``params_at_optimum``, from Hessian-vector
    products only. ``outer_loss`` gets the trajectory ``(params*, params*(h))`` (see
    :class:`Trajectory`), so an outer objective written for :func:`unrolled` works here too.

    Args:
        method: ``"cg"`` (conjugate gradient, needs ``H + damping I`` positive definite;
            stops after ``iters`` Hessian-vector products or at relative residual ``tol``)
            or ``"neumann"`` (``lr * sum_{j<=iters} (I - lr (H + damping I))^j``; converges
            when ``0 < lr < 2 / lambda_max``; a fixed number of products, no host sync in
            the loop, so it also runs under ``torch.func.vmap`` when its checks pass).
        damping: Tikhonov term added to ``H``.
        lr: Neumann step size (unused by CG).

    The result is exact only at a stationary point of the inner loss; ``info`` reports the
    inner gradient norm there and the relative residual of the linear solve.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if method == "neumann" and not lr > 0:
        raise ValueError(f"neumann needs lr > 0, got {lr}")
    _check_tensor_dict(params_at_optimum, "params_at_optimum")
    _check_tensor_dict(hparams, "hparams")
    p_star = _detached(dict(params_at_optimum))
    h0 = _detached(dict(hparams))
    sol = _implicit_solve(inner_loss, outer_loss, p_star, h0, method, iters, damping, lr, tol)
    grads, loss, aux, used, residual, inner_grad_norm = sol
    if method == "neumann" and not all(torch.isfinite(g).all() for g in grads.values()):
        raise ValueError(f"implicit(method='neumann') diverged: lr={lr} is too large for the inner Hessian")
    info = {"method": method, "iters": used, "residual": float(residual), "inner_grad_norm": float(inner_grad_norm)}
    return Hypergrad(_detached(grads), loss.detach(), _detached(aux), (p_star, p_star), (None, None), info)


def _implicit_solve(inner, outer, p_star, h0, method, iters, damping, lr, tol):
    """The implicit hypergradient as pure ``torch.func`` code (CG adds host-side stopping)."""
    def outer_at(q: Params, h: Params):
        loss, aux = _outer_value(outer(_trajectory(inner, (p_star, q), (None, None), h), h))
        return loss, (loss, carry.pack(aux))

    carry = _Carry()
    (d_p, d_h), (loss, packed) = grad(outer_at, argnums=(0, 1), has_aux=True)(p_star, h0)
    aux = carry.unpack(packed)

    def inner_grad(q: Params, h: Params) -> Params:
        return grad(lambda q_: _loss_of(inner(q_, h)))(q)

    # Hessian-vector products as vector-Jacobian products of the inner gradient (H is symmetric):
    # the gradient's graph is built once and reused by every product of the solver.
    g0, hvp = vjp(lambda q: inner_grad(q, h0), p_star)

    def matvec(v: Params) -> Params:
        (hv,) = hvp(v)
        return _tree_axpy(damping, v, hv)

    if method == "cg":
        v, used = _conjugate_gradient(matvec, d_p, iters, tol)
    else:
        v, used = _neumann(matvec, d_p, iters, lr)
    b_norm = torch.sqrt(_tree_dot(d_p, d_p))
    r = _tree_axpy(-1.0, d_p, matvec(v))
    residual = torch.where(b_norm > 0, torch.sqrt(_tree_dot(r, r)) / b_norm.clamp_min(1e-30), torch.zeros_like(b_norm))
    mixed = grad(lambda h: _tree_dot(inner_grad(p_star, h), _detached(v)))(h0)
    grads = {k: d_h[k] - mixed[k] for k in h0}
    inner_grad_norm = torch.sqrt(_tree_dot(g0, g0))
    return grads, loss, aux, used, residual, inner_grad_norm


def _conjugate_gradient(matvec: Callable[[Params], Params], b: Params, iters: int, tol: float) -> tuple[Params, int]:
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    d = dict(r)
    rs = float(_tree_dot(r, r))
    stop = (tol * math.sqrt(rs)) ** 2
    used = 0
    while used < iters and rs > stop:
        ad = matvec(d)
        curvature = float(_tree_dot(d, ad))
        if curvature <= 0:
            raise ValueError(
                f"implicit(method='cg'): the inner Hessian plus damping is not positive definite "
                f"(d^T (H + damping I) d = {curvature:.3g} at CG iteration {used}); "
                "increase damping, check that params_at_optimum is a minimum, or use method='neumann'"
            )
        a = rs / curvature
        x = _tree_axpy(a, d, x)
        r = _tree_axpy(-a, ad, r)
        rs_new = float(_tree_dot(r, r))
        d = _tree_axpy(rs_new / rs, d, r)
        rs = rs_new
        used += 1
    return x, used


def _neumann(matvec: Callable[[Params], Params], b: Params, iters: int, lr: float) -> tuple[Params, int]:
    term = {k: lr * v for k, v in b.items()}
    total = dict(term)
    for _ in range(iters):
        term = _tree_axpy(-lr, matvec(term), term)
        total = {k: total[k] + term[k] for k in total}
    return total, iters


# ----------------------------------------------------------------------------- check


def check(hg_fn: Callable[[dict[str, Tensor]], Any], hparams: Mapping[str, Tensor], eps: float = 1e-6) -> float:
    """Compare a hypergradient with central finite differences of its outer loss, in float64.

    ``hg_fn(hparams)`` must return a :class:`Hypergrad` (or any object with ``.outer`` and
    ``.grads``) computed in float64. ``hparams`` are cast to float64; every element ``i`` is
    perturbed by ``+-eps`` and ``fd_i = (outer(+) - outer(-)) / (2 eps)`` (``2 N + 1`` calls
    of ``hg_fn`` for ``N`` elements, so keep problems small).

    Returns:
        ``||analytic - fd||_inf / max(||fd||_inf, 1e-12)``, the infinity norms taken over
        the elements of all hparams together. Values around 1e-6 or below mean agreement.
    """
    if not eps > 0:
        raise ValueError(f"check: eps must be > 0, got {eps}")
    _check_tensor_dict(hparams, "hparams")
    base = {k: v.detach().to(torch.float64).clone() for k, v in hparams.items()}

    def outer_value(res: Any) -> float:
        outer = getattr(res, "outer", None)
        if not isinstance(outer, Tensor):
            raise TypeError("check: hg_fn must return an object with a Tensor attribute .outer (e.g. a Hypergrad)")
        if outer.dtype != torch.float64:
            raise ValueError(
                f"check: hg_fn computed .outer in {outer.dtype}; finite differences need float64 "
                "(build params and data in float64)"
            )
        return float(outer)

    res = hg_fn({k: v.clone() for k, v in base.items()})
    outer_value(res)
    analytic_tree = {k: res.grads[k] for k in base}
    check_tree(base, analytic_tree, "check: hg_fn result")
    analytic, fd = [], []
    for name, value in base.items():
        flat = value.reshape(-1)
        for j in range(flat.numel()):
            values = []
            for sign in (1.0, -1.0):
                shifted = flat.clone()
                shifted[j] += sign * eps
                hp = dict(base)
                hp[name] = shifted.view_as(value)
                values.append(outer_value(hg_fn(hp)))
            fd.append((values[0] - values[1]) / (2.0 * eps))
        analytic.append(analytic_tree[name].detach().to(torch.float64).reshape(-1))
    a = torch.cat(analytic)
    f = torch.tensor(fd, dtype=torch.float64)
    return float((a - f).abs().max() / max(float(f.abs().max()), 1e-12))

