"""Hypergradients: the derivative of an outer loss through an inner optimisation.

Setting. Inner parameters ``params`` (``dict[str, Tensor]``) are trained on
``inner_loss(params, hparams)``; the result is judged by ``outer_loss(params, hparams)``.
Both losses are plain functions returning a scalar tensor (use
``torch.func.functional_call(module, params, x)`` to run a module on a param dict).
This module returns ``d outer_loss(params_k(hparams), hparams) / d hparams``:

* :func:`unrolled` -- differentiate through ``k`` steps of a functional optimizer
  (:mod:`metaconstraint.optim`), optionally only through the last ``t`` of them;
* :func:`implicit` -- implicit function theorem at an inner optimum (CG or Neumann);
* :func:`check` -- central finite differences in float64, to test either of the above.

Three unrolled backends compute the same quantity and are tested to agree (relative
error <= 1e-6 in float64):

``"func"``   reverse-over-reverse: inner gradients with ``create_graph=True`` on the
             param dict, then one backward pass to the hparams. Cost independent of the
             number of hparams; memory grows with ``steps``.
``"higher"`` the same unrolled steps run by the ``higher`` library (``innerloop_ctx`` and
             its differentiable ``torch.optim.Adam`` / ``SGD``) on a holder ``nn.Module``
             whose parameters are the param dict. Kept as an independent cross-check.
``"jvp"``    forward-over-reverse: forward-mode AD (``torch.autograd.forward_ad``, the
             dual-tensor machinery under ``torch.func.jvp``) carries the tangent
             ``d params / d h`` through ordinary inner backward passes, one pass per scalar
             hparam element. The reverse graph is dropped after every step, so memory does
             not grow with ``steps``. Meant for a few scalars such as ASPC's alpha. The
             tangent of an adam/sgd step is written out by hand (other optimizers use a
             generic double-vjp); on CPU with torch 2.x each op that mixes a dual tensor with a
             tangent-less tensor (data, targets) pays ~0.5-1 ms for a ZeroTensor shape
             computed in Python, so this backend is not faster than ``"func"`` there.

Conventions (all backends follow the ones of :mod:`metaconstraint.optim`):

* Adam has bias correction on, ``eps`` outside the root and ``eps_root`` inside it:
  ``u = -lr * m_hat / (sqrt(v_hat + eps_root) + eps)``. With ``eps_root > 0`` (default
  1e-16) the derivative of the root is finite where ``v = 0`` (first step, a gradient
  entry that is exactly zero); ``eps_root = 0`` can give NaN there.
* ``higher``'s Adam differs in two ways, handled as follows. (1) It adds ``eps`` to
  ``sqrt(v)`` rather than to ``sqrt(v_hat)``; the backend passes ``eps * sqrt(1 - b2**t)``
  at step ``t`` (via higher's per-step ``override``), which makes the update identical.
  (2) It has no ``eps_root``: it masks the gradient through ``v`` where ``v == 0``.
  Where ``v > 0`` the two agree to a relative ``~eps_root / (2 v_hat)`` (1e-10 for
  gradients of 1e-3); where ``v == 0`` exactly *and* the gradient entry still depends on
  the hparams, the derivative of the update differs (``1 / (sqrt(eps_root) + eps)`` here
  against ``1 / eps`` in higher), a measure-zero case in practice. One more case: a step
  from a *fresh* Adam state is ``~ -lr * sign(g)``, whose derivative ``~ lr * eps / g**2``
  is a cancellation that ``eps_root`` moves by a relative ``~ eps_root / (eps |g|)``
  (1e-6 for ``|g| = 1e-2`` at the defaults); from the second step on it is ``~ eps_root / v``.
  (The same fact means a hypergradient through one fresh Adam step is tiny, of order
  ``eps``: carry the Adam state, as ASPC does.)
* Weight decay is coupled (added to the gradient) and the learning rate may be a
  schedule ``count -> lr`` (the ``higher`` backend passes it per step via ``override``).
  The ``higher`` backend supports only :func:`metaconstraint.optim.adam` and
  :func:`metaconstraint.optim.sgd`; other transformations raise a ``ValueError``.
* The initial ``params`` and ``opt_state`` are constants (detached); ``hparams`` are
  leaves. A hyper-parameter that the outer loss cannot reach (it enters neither
  ``outer_loss`` nor the inner *gradient* of any differentiated step) raises a
  ``ValueError`` naming it; one that is reached but has a zero derivative gets zeros.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .optim import GradientTransformation, Params, State, apply_updates, check_tree, detach_state

LossFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]

__all__ = ["Hypergrad", "unrolled", "implicit", "check", "BACKENDS", "METHODS"]

BACKENDS = ("func", "higher", "jvp")
METHODS = ("cg", "neumann")


class Hypergrad(Mapping):
    """Read-only mapping ``hparam name -> d outer / d hparam``, plus what the inner run produced.

    Attributes:
        outer: outer loss at the final inner params (0-dim, detached).
        params: final inner params (detached); for :func:`implicit`, the given optimum.
        opt_state: final optimizer state (detached, :mod:`metaconstraint.optim` format),
            or ``None`` for :func:`implicit`.
        info: diagnostics (backend or method, steps, solver residual, ...).
    """

    __slots__ = ("_grads", "outer", "params", "opt_state", "info")

    def __init__(
        self,
        grads: Mapping[str, Tensor],
        outer: Tensor,
        params: Mapping[str, Tensor],
        opt_state: Optional[State] = None,
        info: Optional[dict[str, Any]] = None,
    ) -> None:
        self._grads = {k: v.detach() for k, v in grads.items()}
        self.outer = outer.detach()
        self.params = {k: v.detach() for k, v in params.items()}
        self.opt_state = None if opt_state is None else detach_state(opt_state)
        self.info = dict(info or {})

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._grads[name]
        except KeyError:
            raise KeyError(f"no hypergradient for '{name}'; the hparams are {sorted(self._grads)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._grads)

    def __len__(self) -> int:
        return len(self._grads)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self._grads.items()}
        return f"Hypergrad(outer={float(self.outer):.6g}, grads={shapes}, info={self.info})"


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


def _check_opt_state(state: Any, params: Mapping[str, Tensor]) -> None:
    if not isinstance(state, Mapping) or "count" not in state:
        raise TypeError("opt_state must be a state from opt.init(params) / opt.update (a dict with 'count')")
    for key, value in state.items():
        if isinstance(value, Mapping):
            check_tree(params, value, f"opt_state['{key}']")


def _scalar(value: Any, fn_name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn_name} must return a scalar Tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"{fn_name} must return a scalar (0-dim) tensor, got shape {tuple(value.shape)}; "
            "reduce it with .mean() or .sum()"
        )
    return value.reshape(())


def _no_path_error(name: str, where: str) -> ValueError:
    return ValueError(
        f"hparam '{name}' has no path to the outer loss: it enters neither outer_loss nor the gradient "
        f"of inner_loss w.r.t. the params {where}, so the autograd graph is missing (a hyper-parameter "
        "that only adds a constant to inner_loss cannot change the params). Check that the loss functions "
        f"use hparams['{name}'], or drop it from hparams"
    )


def _leaves(d: Mapping[str, Tensor]) -> Params:
    return {k: v.detach().requires_grad_() for k, v in d.items()}


def _inner_grads(inner_loss: LossFn, params: Params, hparams: Mapping[str, Tensor], create_graph: bool) -> Params:
    """Gradient of the inner loss w.r.t. every param; ``params`` must require grad."""
    loss = _scalar(inner_loss(params, hparams), "inner_loss")
    if not loss.requires_grad:
        raise ValueError("inner_loss has no autograd graph: it does not depend on the params it was given")
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
    out: Params = {}
    for n, g in zip(names, grads):
        if g is None:
            raise ValueError(f"inner_loss does not depend on parameter '{n}' (no gradient); drop it from params")
        out[n] = g
    return out


# ----------------------------------------------------------------------------- unrolled


def _plain_steps(
    inner_loss: LossFn, params: Params, hparams: Mapping[str, Tensor], opt: GradientTransformation, state: State, n: int
) -> tuple[Params, State]:
    """``n`` ordinary optimizer steps with no graph to the hparams (first-order, truncated part)."""
    hp = {k: v.detach() for k, v in hparams.items()}
    for _ in range(n):
        p = _leaves(params)
        grads = _inner_grads(inner_loss, p, hp, create_graph=False)
        with torch.no_grad():
            updates, state = opt.update(grads, state, params)
            params = apply_updates(params, updates)
        state = detach_state(state)
    return params, state


def _grads_to_hparams(outer: Tensor, hparams: Params, where: str) -> Params:
    names = list(hparams)
    if not outer.requires_grad:
        raise _no_path_error(names[0], where)
    gs = torch.autograd.grad(outer, [hparams[n] for n in names], allow_unused=True)
    out: Params = {}
    for n, g in zip(names, gs):
        if g is None:
            raise _no_path_error(n, where)
        out[n] = g
    return out


def _unroll_func(inner_loss, outer_loss, params, hparams, opt, state, steps):
    p: Params = _leaves(params)
    for _ in range(steps):
        grads = _inner_grads(inner_loss, p, hparams, create_graph=True)
        updates, state = opt.update(grads, state, p)
        p = apply_updates(p, updates)
    outer = _scalar(outer_loss(p, hparams), "outer_loss")
    grads = _grads_to_hparams(outer, hparams, f"in the {steps} differentiated step(s)")
    return grads, outer, p, state


def _tensor_leaves(tree: Any, out: list[Tensor]) -> Callable[[list[Tensor]], Any]:
    """Append the tensors of a nest of dicts/lists/tuples to ``out``; return a rebuilder."""
    if isinstance(tree, Tensor):
        i = len(out)
        out.append(tree)
        return lambda leaves: leaves[i]
    if isinstance(tree, dict):
        builders = {k: _tensor_leaves(v, out) for k, v in tree.items()}
        return lambda leaves: {k: b(leaves) for k, b in builders.items()}
    if isinstance(tree, (list, tuple)):
        items = [_tensor_leaves(v, out) for v in tree]
        return lambda leaves: type(tree)(b(leaves) for b in items)
    return lambda leaves: tree


def _split_dual(x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    primal, tangent = fwAD.unpack_dual(x)
    return primal.detach(), None if tangent is None else tangent.detach()


def _known_update_with_tangents(
    opt: GradientTransformation, grads: Params, state: State, params: Params
) -> tuple[Params, State]:
    """Tangent-carrying step of :func:`~metaconstraint.optim.adam` / :func:`~metaconstraint.optim.sgd`.

    Written out by hand (primal and tangent side by side, plain tensors) because it is several
    times cheaper than the generic :func:`_update_with_tangents`; it must mirror
    ``metaconstraint.optim`` exactly, which ``tests/test_hypergrad.py`` checks against the
    ``func`` backend for both optimizers, with weight decay, momentum and schedules. An output
    gets a tangent only if one of its inputs has one, so a missing path stays detectable.
    """
    hyper = opt.hyperparams
    count = int(state["count"])
    lr, wd = hyper["lr"], hyper["weight_decay"]
    step_size = float(lr(count)) if callable(lr) else float(lr)
    updates: Params = {}
    new_state: State = {"count": count + 1}
    if hyper["name"] == "adam":
        b1, b2 = hyper["betas"]
        eps, eps_root = hyper["eps"], hyper["eps_root"]
        t = count + 1
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        new_state["mu"], new_state["nu"] = {}, {}
    else:
        momentum = hyper["momentum"]
        if momentum:
            new_state["trace"] = {}

    def dual(primal: Tensor, tangent: Optional[Tensor]) -> Tensor:
        return primal if tangent is None else fwAD.make_dual(primal, tangent)

    for k, gk in grads.items():
        g, g_dot = _split_dual(gk)
        inputs = [g_dot]
        if wd:
            p, p_dot = _split_dual(params[k])
            g = g + wd * p
            inputs.append(p_dot)
        if hyper["name"] == "adam":
            m0, m0_dot = _split_dual(state["mu"][k])
            v0, v0_dot = _split_dual(state["nu"][k])
            inputs += [m0_dot, v0_dot]
        elif momentum and count > 0:
            tr, tr_dot = _split_dual(state["trace"][k])
            inputs.append(tr_dot)
        live = any(x is not None for x in inputs)
        zero = torch.zeros_like(g)
        g_dot = (zero if g_dot is None else g_dot) + (wd * p_dot if wd and p_dot is not None else 0.0)
        if hyper["name"] == "adam":
            m0_dot = zero if m0_dot is None else m0_dot
            v0_dot = zero if v0_dot is None else v0_dot
            m = b1 * m0 + (1.0 - b1) * g
            v = b2 * v0 + (1.0 - b2) * (g * g)
            root = torch.sqrt(v / bc2 + eps_root)
            denom = root + eps
            c = -step_size / bc1
            u = c * m / denom
            m_dot = v_dot = u_dot = None
            if live:
                m_dot = b1 * m0_dot + (1.0 - b1) * g_dot
                v_dot = b2 * v0_dot + (2.0 * (1.0 - b2)) * (g * g_dot)
                root_dot = v_dot / (2.0 * bc2 * root)
                u_dot = c * (m_dot - m * root_dot / denom) / denom
            new_state["mu"][k], new_state["nu"][k] = dual(m, m_dot), dual(v, v_dot)
        else:
            d, d_dot = g, g_dot
            if momentum:
                if count > 0:
                    d = momentum * tr + g
                    d_dot = momentum * (zero if tr_dot is None else tr_dot) + g_dot
                new_state["trace"][k] = dual(d, d_dot if live else None)
            u, u_dot = -step_size * d, (-step_size * d_dot if live else None)
        updates[k] = dual(u, u_dot)
    return updates, new_state


def _update_with_tangents(
    opt: GradientTransformation, grads: Params, state: State, params: Params
) -> tuple[Params, State]:
    """``opt.update`` on dual tensors: primal result plus its forward-mode tangent.

    Computed on the primals with reverse mode (the tangent of ``y = f(x)`` is
    ``d/dw [(J^T w) . x_dot]``, two backward passes through the elementwise update) rather
    than by running ``opt.update`` on dual tensors: in forward AD every op that mixes a dual
    tensor with a tangent-less operand (the optimizer's Python-scalar coefficients) builds a
    ZeroTensor tangent whose shape comes from a Python meta kernel, about 0.5 ms per op on
    CPU with torch 2.x -- this made a 2x256 MLP step some 50 ms slower.
    """
    leaves: list[Tensor] = []
    rebuild_inputs = _tensor_leaves((grads, state, params), leaves)
    primals, tangents = [], []
    for x in leaves:
        primal, tangent = fwAD.unpack_dual(x)
        primals.append(primal.detach().requires_grad_(primal.is_floating_point()))
        tangents.append(None if tangent is None else tangent.detach())
    g0, s0, p0 = rebuild_inputs(primals)
    with torch.enable_grad():
        updates, new_state = opt.update(g0, s0, p0)
    outs: list[Tensor] = []
    rebuild_outputs = _tensor_leaves((updates, new_state), outs)
    active = [i for i, y in enumerate(outs) if y.requires_grad]
    y_dots: list[Optional[Tensor]] = [None] * len(outs)
    live = [j for j, t in enumerate(tangents) if t is not None]
    if active and live:
        ws = [torch.zeros_like(outs[i], requires_grad=True) for i in active]
        x_bars = torch.autograd.grad(
            [outs[i] for i in active], [primals[j] for j in live], grad_outputs=ws, create_graph=True, allow_unused=True
        )
        pairs = [(xb, tangents[j]) for xb, j in zip(x_bars, live) if xb is not None and xb.requires_grad]
        if pairs:
            dots = torch.autograd.grad(
                [xb for xb, _ in pairs], ws, grad_outputs=[t for _, t in pairs], allow_unused=True
            )
            for i, d in zip(active, dots):
                y_dots[i] = d
    result = [
        y.detach() if d is None else fwAD.make_dual(y.detach(), d.detach()) for y, d in zip(outs, y_dots)
    ]
    return rebuild_outputs(result)


@functools.cache
def _quiet_forward_ad_setup() -> None:
    """Make torch load its forward-AD decompositions once, hiding its internal warning.

    The first ``make_dual`` scripts them with ``torch.jit.script``, which warns that it is
    deprecated: a message about torch's internals, not about the user's code.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=DeprecationWarning)
        with fwAD.dual_level():
            fwAD.make_dual(torch.zeros(()), torch.zeros(()))


def _unroll_jvp(inner_loss, outer_loss, params, hparams, opt, state, steps):
    _quiet_forward_ad_setup()
    # Forward AD is switched off inside e.g. a custom autograd.Function's forward; this
    # backend needs it on (private torch API, present since torch 1.11).
    with fwAD._set_fwd_grad_enabled(True):
        return _unroll_jvp_enabled(inner_loss, outer_loss, params, hparams, opt, state, steps)


def _split_tree(tree: Any) -> tuple[Any, Any]:
    """A nest of (possibly dual) tensors as two nests: detached primals, tangents (or None)."""
    if isinstance(tree, Tensor):
        primal, tangent = fwAD.unpack_dual(tree)
        return primal.detach(), None if tangent is None else tangent.detach()
    if isinstance(tree, dict):
        pairs = {k: _split_tree(v) for k, v in tree.items()}
        return {k: a for k, (a, _) in pairs.items()}, {k: b for k, (_, b) in pairs.items()}
    if isinstance(tree, (list, tuple)):
        pairs = [_split_tree(v) for v in tree]
        return type(tree)(a for a, _ in pairs), type(tree)(b for _, b in pairs)
    return tree, None


def _join_tree(primals: Any, tangents: Any, requires_grad: bool = False) -> Any:
    """Inverse of :func:`_split_tree` inside a dual level (primals become fresh leaves)."""
    if isinstance(primals, Tensor):
        leaf = primals.detach().requires_grad_(requires_grad)
        return leaf if tangents is None else fwAD.make_dual(leaf, tangents)
    if isinstance(primals, dict):
        return {k: _join_tree(v, None if tangents is None else tangents[k], requires_grad) for k, v in primals.items()}
    if isinstance(primals, (list, tuple)):
        ts = [None] * len(primals) if tangents is None else tangents
        return type(primals)(_join_tree(v, t, requires_grad) for v, t in zip(primals, ts))
    return primals


def _unroll_jvp_enabled(inner_loss, outer_loss, params, hparams, opt, state, steps):
    known = opt.hyperparams.get("name") in ("adam", "sgd")
    step_fn = _known_update_with_tangents if known else _update_with_tangents
    base = {k: v.detach() for k, v in hparams.items()}
    # Forward mode through the inner steps, one pass per hparam element: the tangent of the
    # final params. The outer loss is then differentiated once, in reverse mode, for all
    # directions: d outer = grad_p outer . p_dot + d_h outer (and no dual ops in outer_loss).
    # Each step runs in its own dual level, with primals and tangents carried outside as plain
    # tensors: torch keeps forward grads made inside a level alive until the level exits, so one
    # level for all steps would grow memory with every step.
    directions: list[tuple[str, int, dict[str, Optional[Tensor]]]] = []
    final_p = final_state = None
    for name, value in base.items():
        for j in range(value.numel()):
            e_j = torch.zeros(value.numel(), dtype=value.dtype, device=value.device)
            e_j[j] = 1.0
            p, p_dot = dict(params), None
            s, s_dot = state, None
            for _ in range(steps):
                with fwAD.dual_level():
                    hp = dict(base)
                    hp[name] = fwAD.make_dual(value, e_j.view_as(value))
                    p_in = _join_tree(p, p_dot, requires_grad=True)
                    g = _inner_grads(inner_loss, p_in, hp, create_graph=False)
                    updates, s_new = step_fn(opt, g, _join_tree(s, s_dot), p_in)
                    with torch.no_grad():  # forward-mode tangents still flow under no_grad
                        p_new = apply_updates(p_in, updates)
                    p, p_dot = _split_tree(p_new)
                    s, s_dot = _split_tree(s_new)
            directions.append((name, j, p_dot))
            if final_p is None:
                final_p, final_state = p, s

    p_leaf, h_leaf = _leaves(final_p), _leaves(base)
    outer = _scalar(outer_loss(p_leaf, h_leaf), "outer_loss")
    pnames, hnames = list(p_leaf), list(h_leaf)
    if outer.requires_grad:
        d = torch.autograd.grad(outer, [p_leaf[n] for n in pnames] + [h_leaf[n] for n in hnames], allow_unused=True)
    else:
        d = (None,) * (len(pnames) + len(hnames))
    d_p = dict(zip(pnames, d[: len(pnames)]))
    d_h = dict(zip(hnames, d[len(pnames) :]))
    grads = {k: torch.zeros_like(v).reshape(-1) for k, v in base.items()}
    for name, j, p_dot in directions:
        terms = [(d_p[k] * t).sum() for k, t in p_dot.items() if t is not None and d_p[k] is not None]
        if not terms and d_h[name] is None:
            raise _no_path_error(name, f"in the {steps} differentiated step(s)")
        total = sum(terms) if terms else torch.zeros((), dtype=base[name].dtype)
        if d_h[name] is not None:
            total = total + d_h[name].reshape(-1)[j]
        grads[name][j] = total.detach()
    grads = {k: g.view_as(base[k]) for k, g in grads.items()}
    return grads, outer.detach(), final_p, final_state


def _unroll_higher(inner_loss, outer_loss, params, hparams, opt, state, steps):
    import higher  # imported here: only this backend needs it

    hyper = opt.hyperparams
    kind = hyper.get("name")
    if kind not in ("adam", "sgd"):
        raise ValueError(
            f"backend='higher' supports only metaconstraint.optim.adam and sgd, got an optimizer named {kind!r}; "
            "use backend='func' or 'jvp'"
        )
    names = list(params)
    holder = _ParamHolder()  # parameter names p0, p1, ...: dict keys may contain '.'
    torch_params = []
    for i, n in enumerate(names):
        param = torch.nn.Parameter(params[n].detach().clone())
        holder.register_parameter(f"p{i}", param)
        torch_params.append(param)
    lr = hyper["lr"]
    count0 = int(state["count"])

    def lr_at(count: int) -> float:
        return float(lr(count)) if callable(lr) else float(lr)

    if kind == "adam":
        b1, b2 = hyper["betas"]
        topt = torch.optim.Adam(
            torch_params, lr=lr_at(count0), betas=(b1, b2), eps=hyper["eps"], weight_decay=hyper["weight_decay"]
        )
        for i, n in enumerate(names):
            topt.state[torch_params[i]] = {
                "step": count0,
                "exp_avg": state["mu"][n].detach().clone(),
                "exp_avg_sq": state["nu"][n].detach().clone(),
            }
    else:
        momentum = hyper["momentum"]
        topt = torch.optim.SGD(torch_params, lr=lr_at(count0), momentum=momentum, weight_decay=hyper["weight_decay"])
        if momentum and count0 > 0:
            for i, n in enumerate(names):
                topt.state[torch_params[i]] = {"momentum_buffer": state["trace"][n].detach().clone()}

    def no_missing(all_grads):
        for n, g in zip(names, all_grads):
            if g is None:
                raise ValueError(f"inner_loss does not depend on parameter '{n}' (no gradient); drop it from params")
        return all_grads

    with higher.innerloop_ctx(holder, topt, copy_initial_weights=False) as (fmodel, diffopt):
        for i in range(steps):
            fast = dict(zip(names, fmodel.fast_params))
            loss = _scalar(inner_loss(fast, hparams), "inner_loss")
            if not loss.requires_grad:
                raise ValueError("inner_loss has no autograd graph: it does not depend on the params it was given")
            override: dict[str, list] = {"lr": [lr_at(count0 + i)]}
            if kind == "adam":
                # higher adds eps to sqrt(v), torch/optim add it to sqrt(v_hat): rescale to match.
                override["eps"] = [hyper["eps"] * math.sqrt(1.0 - b2 ** (count0 + i + 1))]
            diffopt.step(loss, override=override, grad_callback=no_missing)
        fast = dict(zip(names, fmodel.fast_params))
        outer = _scalar(outer_loss(fast, hparams), "outer_loss")
        grads = _grads_to_hparams(outer, hparams, f"in the {steps} differentiated step(s)")
        final_state: State = {"count": count0 + steps}
        if kind == "adam":
            final_state["mu"] = {n: diffopt.state[0][i]["exp_avg"].detach() for i, n in enumerate(names)}
            final_state["nu"] = {n: diffopt.state[0][i]["exp_avg_sq"].detach() for i, n in enumerate(names)}
        elif "trace" in state:
            final_state["trace"] = {n: diffopt.state[0][i]["momentum_buffer"].detach() for i, n in enumerate(names)}
    return grads, outer, fast, final_state


class _ParamHolder(torch.nn.Module):
    """An ``nn.Module`` that only holds parameters ``p0, p1, ...`` (for the ``higher`` backend).

    A subclass because higher derives a patched class from the module's own class, which
    fails for a bare ``torch.nn.Module``.
    """


_UNROLLERS = {"func": _unroll_func, "higher": _unroll_higher, "jvp": _unroll_jvp}


def unrolled(
    inner_loss: LossFn,
    outer_loss: LossFn,
    params: Mapping[str, Tensor],
    hparams: Mapping[str, Tensor],
    opt: GradientTransformation,
    steps: int = 1,
    opt_state: Optional[State] = None,
    backend: str = "func",
    truncate: Optional[int] = None,
) -> Hypergrad:
    """Hypergradient through ``steps`` inner optimizer steps.

    Runs ``params_{i+1} = params_i + opt.update(grad inner_loss(params_i, hparams))`` for
    ``steps`` steps and returns ``d outer_loss(params_steps, hparams) / d hparams``.

    Args:
        inner_loss, outer_loss: ``(params, hparams) -> scalar Tensor``.
        params: initial inner params (treated as constants).
        hparams: hyper-parameters to differentiate (floating tensors of any shape).
        opt: a :class:`metaconstraint.optim.GradientTransformation` (``adam``, ``sgd``, ...).
        steps: number of inner steps ``k >= 1``.
        opt_state: optimizer state to start from (default ``opt.init(params)``).
        backend: ``"func"``, ``"higher"`` or ``"jvp"`` (see the module docstring).
        truncate: differentiate only through the last ``t`` steps (``1 <= t <= k``); the
            first ``k - t`` steps run without graph, so their effect is first-order only.

    Returns:
        :class:`Hypergrad` with the gradients, ``.outer``, ``.params`` and ``.opt_state``.
    """
    if backend not in _UNROLLERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if not isinstance(opt, GradientTransformation):
        raise TypeError(f"opt must be a metaconstraint.optim.GradientTransformation, got {type(opt).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if truncate is None:
        truncate = steps
    if not isinstance(truncate, int) or not 1 <= truncate <= steps:
        raise ValueError(f"truncate must be an int in [1, steps={steps}], got {truncate!r}")
    _check_tensor_dict(params, "params")
    _check_tensor_dict(hparams, "hparams")
    params = {k: v.detach() for k, v in params.items()}
    state = opt.init(params) if opt_state is None else opt_state
    _check_opt_state(state, params)
    state = detach_state(state)
    with torch.enable_grad():
        params, state = _plain_steps(inner_loss, params, hparams, opt, state, steps - truncate)
        hp = _leaves(hparams)
        grads, outer, final_p, final_state = _UNROLLERS[backend](
            inner_loss, outer_loss, params, hp, opt, state, truncate
        )
    info = {"backend": backend, "steps": steps, "truncate": truncate, "optimizer": opt.hyperparams.get("name")}
    return Hypergrad(grads, outer, final_p, final_state, info)


# ----------------------------------------------------------------------------- implicit


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def implicit(
    inner_loss: LossFn,
    outer_loss: LossFn,
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
    with ``H`` the Hessian of ``inner_loss`` w.r.t. the params at ``params_at_optimum``,
    solved with Hessian-vector products only.

    Args:
        method: ``"cg"`` (conjugate gradient, needs ``H + damping I`` positive definite;
            stops after ``iters`` Hessian-vector products or at relative residual ``tol``)
            or ``"neumann"`` (``lr * sum_{j<=iters} (I - lr (H + damping I))^j``; converges
            when ``0 < lr < 2 / lambda_max``).
        damping: Tikhonov term added to ``H``.
        lr: Neumann step size (unused by CG).

    The result is exact only at a stationary point of ``inner_loss``; ``info`` reports the
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
    with torch.enable_grad():
        p = _leaves(params_at_optimum)
        hp = _leaves(hparams)
        pnames, hnames = list(p), list(hp)
        plist, hlist = [p[n] for n in pnames], [hp[n] for n in hnames]

        outer = _scalar(outer_loss(p, hp), "outer_loss")
        if outer.requires_grad:
            d_outer = torch.autograd.grad(outer, plist + hlist, allow_unused=True)
        else:
            d_outer = (None,) * (len(plist) + len(hlist))
        d_outer_p = [torch.zeros_like(t) if g is None else g for t, g in zip(plist, d_outer[: len(plist)])]
        d_outer_h = d_outer[len(plist) :]

        g_inner = _inner_grads(inner_loss, p, hp, create_graph=True)
        g_list = [g_inner[n] for n in pnames]
        b = _flat(d_outer_p).detach()

        curved = [i for i, g in enumerate(g_list) if g.requires_grad]  # the others have zero Hessian rows

        def matvec(vec: Tensor) -> Tensor:
            if not curved:
                return damping * vec
            pieces = _unflat(vec, plist)
            hv = torch.autograd.grad(
                [g_list[i] for i in curved], plist, grad_outputs=[pieces[i] for i in curved],
                retain_graph=True, allow_unused=True,
            )
            hv_flat = _flat([torch.zeros_like(t) if h is None else h for t, h in zip(plist, hv)]).detach()
            return hv_flat + damping * vec

        b_norm = float(b.norm())
        if method == "cg":
            v, used = _conjugate_gradient(matvec, b, iters, tol)
        else:
            v, used = _neumann(matvec, b, iters, lr)
        residual = float((matvec(v) - b).norm()) / max(b_norm, 1e-30) if b_norm > 0 else 0.0

        if curved:
            pieces = _unflat(v, plist)
            mixed = torch.autograd.grad(
                [g_list[i] for i in curved], hlist, grad_outputs=[pieces[i] for i in curved], allow_unused=True
            )
        else:
            mixed = (None,) * len(hlist)
        grads: Params = {}
        for n, direct, mix in zip(hnames, d_outer_h, mixed):
            if direct is None and mix is None:
                raise _no_path_error(n, "at params_at_optimum")
            total = torch.zeros_like(hp[n]) if direct is None else direct.clone()
            if mix is not None:
                total = total - mix
            grads[n] = total
        inner_grad_norm = float(_flat([g.detach() for g in g_list]).norm())
    info = {"method": method, "iters": used, "residual": residual, "inner_grad_norm": inner_grad_norm}
    return Hypergrad(grads, outer, p, None, info)


def _conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float) -> tuple[Tensor, int]:
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rs = float(r @ r)
    stop = (tol * float(b.norm())) ** 2
    used = 0
    while used < iters and rs > stop:
        ad = matvec(d)
        curvature = float(d @ ad)
        if curvature <= 0:
            raise ValueError(
                f"implicit(method='cg'): the inner Hessian plus damping is not positive definite "
                f"(d^T (H + damping I) d = {curvature:.3g} at CG iteration {used}); "
                "increase damping, check that params_at_optimum is a minimum, or use method='neumann'"
            )
        step = rs / curvature
        x = x + step * d
        r = r - step * ad
        rs_new = float(r @ r)
        d = r + (rs_new / rs) * d
        rs = rs_new
        used += 1
    return x, used


def _neumann(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, lr: float) -> tuple[Tensor, int]:
    term = lr * b
    total = term.clone()
    for _ in range(iters):
        term = term - lr * matvec(term)
        total = total + term
    if not torch.isfinite(total).all():
        raise ValueError(f"implicit(method='neumann') diverged: lr={lr} is too large for the inner Hessian")
    return total, iters


# ----------------------------------------------------------------------------- check


def check(hg_fn: Callable[[dict[str, Tensor]], Any], hparams: Mapping[str, Tensor], eps: float = 1e-6) -> float:
    """Compare a hypergradient with central finite differences of its outer loss, in float64.

    ``hg_fn(hparams)`` must return a :class:`Hypergrad` (or any object with ``.outer`` and
    mapping access ``obj[name]``) computed in float64. ``hparams`` are cast to float64; every
    element ``i`` is perturbed by ``+-eps`` and ``fd_i = (outer(+) - outer(-)) / (2 eps)``
    (``2 N + 1`` calls of ``hg_fn`` for ``N`` elements, so keep problems small).

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
    analytic_tree = {k: res[k] for k in base}
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
