"""Hypergradients (metaconstraint.hypergrad): backend agreement, closed forms, finite differences, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from torch.utils._pytree import tree_flatten

from metaconstraint import hypergrad, optim

DT = torch.float64
BACKENDS = ["func", "higher", "jvp"]


# ----------------------------------------------------------------------------- problems


def at_final(fn):
    """An outer objective that reads only the final iterate: ``fn(params_k, hparams)``."""
    return lambda traj, h: fn(traj.params[-1], h)


def mlp_problem(seed: int = 0) -> SimpleNamespace:
    """Tiny tanh MLP; inner = per-output weighted regression + alpha * L2, outer = validation MSE.

    Param names contain '.', which the higher backend must map to module attribute names.
    """
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    params = {k: torch.randn(v.shape, generator=g, dtype=DT) * 0.5 for k, v in net.named_parameters()}
    x, y = torch.randn(32, 4, generator=g, dtype=DT), torch.randn(32, 3, generator=g, dtype=DT)
    xv, yv = torch.randn(24, 4, generator=g, dtype=DT), torch.randn(24, 3, generator=g, dtype=DT)

    def inner(p, h):
        fit = (h["mix"] * (functional_call(net, p, (x,)) - y) ** 2).mean()
        return fit + h["alpha"] * sum((v**2).sum() for v in p.values())

    def validation(p, h):
        return ((functional_call(net, p, (xv,)) - yv) ** 2).mean()

    hparams = {"alpha": torch.tensor(0.05, dtype=DT), "mix": torch.tensor([1.0, 0.5, 2.0], dtype=DT)}
    return SimpleNamespace(inner=inner, outer=at_final(validation), validation=validation, params=params, hparams=hparams)


def ridge_problem(seed: int = 1) -> SimpleNamespace:
    """Ridge regression with one learnable L2 weight per feature, and its closed forms.

    inner(w) = |X w - y|^2 / (2n) + sum_i lam_i w_i^2 / 2, so w* = A^-1 X^T y / n with
    A = X^T X / n + diag(lam); outer(w) = |Xv w - yv|^2 / (2 nv). Since dw*/dlam_i = -A^-1 e_i w*_i,
    d outer(w*) / d lam_i = -(A^-1 g_v)_i w*_i with g_v = Xv^T (Xv w* - yv) / nv.
    """
    g = torch.Generator().manual_seed(seed)
    n, nv, d = 40, 30, 4
    X, Xv = torch.randn(n, d, generator=g, dtype=DT), torch.randn(nv, d, generator=g, dtype=DT)
    w_true = torch.randn(d, generator=g, dtype=DT)
    y = X @ w_true + 0.5 * torch.randn(n, generator=g, dtype=DT)
    yv = Xv @ w_true + 0.5 * torch.randn(nv, generator=g, dtype=DT)

    def inner(p, h):
        return ((X @ p["w"] - y) ** 2).sum() / (2 * n) + 0.5 * (h["lam"] * p["w"] ** 2).sum()

    def validation(p, h):
        return ((Xv @ p["w"] - yv) ** 2).sum() / (2 * nv)

    def hessian(lam):
        return X.T @ X / n + torch.diag(lam)

    def optimum(h):
        return {"w": torch.linalg.solve(hessian(h["lam"]), X.T @ y / n)}

    def closed_form(h):
        w = optimum(h)["w"]
        g_v = Xv.T @ (Xv @ w - yv) / nv
        return -torch.linalg.solve(hessian(h["lam"]), g_v) * w

    hparams = {"lam": torch.tensor([0.3, 0.1, 0.5, 0.2], dtype=DT)}
    eig = torch.linalg.eigvalsh(hessian(hparams["lam"]))
    return SimpleNamespace(
        inner=inner, outer=at_final(validation), validation=validation, optimum=optimum, closed_form=closed_form, hparams=hparams,
        params={"w": torch.zeros(d, dtype=DT)}, eig_min=float(eig[0]), eig_max=float(eig[-1]),
    )


def rel_err(a, b) -> float:
    """max over keys of ||a - b||_inf / ||b||_inf (hypergradients, param dicts or Hypergrad results)."""
    a, b = getattr(a, "grads", a), getattr(b, "grads", b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def tensors(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


OPTIMIZERS = {
    # eps_root tiny: see test_default_eps_root_explains_the_first_step_gap_to_higher. eps large:
    # a fresh Adam step is ~ -lr sign(g), whose derivative is only ~ lr eps / g^2.
    "adam": lambda: optim.adam(lr=1e-2, eps=1e-3, eps_root=1e-22),
    "adam_wd_schedule": lambda: optim.adam(
        lr=optim.exponential_decay(2e-2, 0.8), eps=1e-3, weight_decay=1e-2, eps_root=1e-22
    ),
    "sgd": lambda: optim.sgd(lr=0.1),
    "sgd_momentum_wd": lambda: optim.sgd(lr=0.1, momentum=0.9, weight_decay=1e-2),
    "custom_chain": lambda: optim.chain(optim.trace(0.5), optim.scale_by_adam(eps=1e-3), optim.scale_by_learning_rate(5e-3)),
}


def warm_start(prob, opt, n=2):
    """Params and optimizer state after n plain steps, to test starting from a given opt_state."""
    params, state = dict(prob.params), opt.init(prob.params)
    for _ in range(n):
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        grads = dict(zip(p, torch.autograd.grad(prob.inner(p, prob.hparams), list(p.values()))))
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return params, optim.detach_state(state)


# ----------------------------------------------------------------------------- backend agreement


def backends_with(opt):
    """higher needs an optimizer with a torch.optim equivalent (adam, sgd); func and jvp take any chain."""
    return BACKENDS if opt.torch_equivalent is not None else ["func", "jvp"]


@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_backends_agree(opt_name, steps, given_state):
    prob, opt = mlp_problem(), OPTIMIZERS[opt_name]()
    params, state = warm_start(prob, opt) if given_state else (prob.params, None)
    res = {
        b: hypergrad.unrolled(prob.inner, prob.outer, params, prob.hparams, opt, steps=steps, opt_state=state, backend=b)
        for b in backends_with(opt)
    }
    ref = res["func"]
    assert all(float(v.abs().max()) > 1e-6 for v in ref.grads.values())  # a non-trivial hypergradient
    assert len(ref.params) == len(ref.opt_state) == steps + 1
    for b in set(res) - {"func"}:
        assert rel_err(res[b], ref) <= 1e-10, (b, rel_err(res[b], ref))
        assert torch.allclose(res[b].outer, ref.outer, rtol=1e-12, atol=0)
        for i in range(steps + 1):
            assert rel_err(res[b].params[i], ref.params[i]) <= 1e-12
        for x, y in zip(tensors(res[b].opt_state[-1]), tensors(ref.opt_state[-1])):
            assert torch.allclose(x, y, rtol=1e-10, atol=1e-300), b
        assert optim.step_count(res[b].opt_state[-1]) == steps + (2 if given_state else 0)


def test_given_opt_state_is_used():
    # starting Adam from a warm state must differ from starting it fresh at the same params
    prob, opt = mlp_problem(), OPTIMIZERS["adam"]()
    params, state = warm_start(prob, opt)
    for b in BACKENDS:
        warm = hypergrad.unrolled(prob.inner, prob.outer, params, prob.hparams, opt, opt_state=state, backend=b)
        cold = hypergrad.unrolled(prob.inner, prob.outer, params, prob.hparams, opt, backend=b)
        assert rel_err(warm, cold) > 1e-2, b


def test_default_eps_root_explains_the_first_step_gap_to_higher():
    """higher has no eps_root. A first Adam step is ~ -lr sign(g); its derivative, ~ lr eps / g^2,
    moves by a relative ~ eps_root / (eps |g|) under eps_root. The gap must shrink with eps_root."""
    prob = mlp_problem()
    gaps = {}
    for er in (1e-16, 1e-22):
        opt = optim.adam(lr=1e-2, eps_root=er)
        a = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, backend="func")
        b = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, backend="higher")
        gaps[er] = rel_err(b, a)
    assert gaps[1e-22] <= 1e-9
    assert gaps[1e-16] > 100 * gaps[1e-22]
    assert gaps[1e-16] <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_leave_inputs_untouched(backend):
    prob = mlp_problem()
    before = {k: v.clone() for k, v in prob.params.items()}
    hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1), steps=2, backend=backend)
    for k, v in prob.params.items():
        assert torch.equal(v, before[k]) and not v.requires_grad
    assert not any(v.requires_grad for v in prob.hparams.values())


# ----------------------------------------------------------------------------- optimizer hyper-parameters


@pytest.mark.parametrize("backend", BACKENDS)
def test_hypergradient_of_the_inner_lr_betas_and_weight_decay(backend):
    """opt as a function of the hparams: one call differentiates the optimizer's own settings."""
    prob = mlp_problem()
    hp = dict(prob.hparams, lr=torch.tensor(2e-2, dtype=DT), b1=torch.tensor(0.8, dtype=DT), wd=torch.tensor(1e-2, dtype=DT))

    def make_opt(h):
        return optim.adam(lr=h["lr"], betas=(h["b1"], 0.99), eps=1e-3, eps_root=1e-22, weight_decay=h["wd"])

    fn = lambda h: hypergrad.unrolled(prob.inner, prob.outer, prob.params, h, make_opt, steps=3, backend=backend)  # noqa
    res = fn(hp)
    assert all(float(res.grads[k].abs()) > 1e-8 for k in ("lr", "b1", "wd"))
    assert hypergrad.check(fn, hp) <= 1e-6
    # a tensor hyper-parameter gives the same steps as the number
    plain = optim.adam(lr=2e-2, betas=(0.8, 0.99), eps=1e-3, eps_root=1e-22, weight_decay=1e-2)
    ref = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, plain, steps=3, backend=backend)
    assert rel_err(res.params[-1], ref.params[-1]) <= 1e-14


# ----------------------------------------------------------------------------- trajectory objectives


@pytest.mark.parametrize("backend", BACKENDS)
def test_outer_objective_over_the_trajectory(backend):
    """The mean validation loss over all iterates plus the inner loss at the start and the end."""
    prob = mlp_problem()
    opt = OPTIMIZERS["adam_wd_schedule"]()

    def outer(traj, h):
        val = sum(prob.validation(p, h) for p in traj.params) / len(traj.params)
        return val + 0.1 * (traj.outputs[0] + traj.outputs[-1]), {"val": val}

    fn = lambda h: hypergrad.unrolled(prob.inner, outer, prob.params, h, opt, steps=4, backend=backend)  # noqa
    res = fn(prob.hparams)
    assert set(res.aux) == {"val"} and not res.aux["val"].requires_grad
    assert hypergrad.check(fn, prob.hparams) <= 1e-6
    ref = hypergrad.unrolled(prob.inner, outer, prob.params, prob.hparams, opt, steps=4, backend="func")
    assert rel_err(res, ref) <= 1e-10


def test_evaluate_with_constant_hparams_gives_the_semi_gradient():
    """outputs[i] carry the direct dependence on the hparams; evaluate(i, detached) drops it."""
    prob = mlp_problem()
    opt = optim.sgd(0.1)
    live = lambda traj, h: traj.outputs[-1]  # noqa: E731
    held = lambda traj, h: traj.evaluate(-1, {k: v.detach() for k, v in h.items()})  # noqa: E731
    a = hypergrad.unrolled(prob.inner, live, prob.params, prob.hparams, opt, steps=2)
    b = hypergrad.unrolled(prob.inner, held, prob.params, prob.hparams, opt, steps=2)
    assert torch.equal(a.outer, b.outer)
    # the difference is exactly the direct term d inner(p_k; h) / d h at fixed p_k
    p_k = a.params[-1]
    h = {k: v.clone().requires_grad_() for k, v in prob.hparams.items()}
    direct = dict(zip(h, torch.autograd.grad(prob.inner(p_k, h), list(h.values()))))
    for k in h:
        assert torch.allclose(a.grads[k] - b.grads[k], direct[k], rtol=1e-10, atol=1e-14)


def test_outputs_are_evaluated_only_when_read():
    prob = mlp_problem()
    calls = []

    def inner(p, h):
        calls.append(1)
        return prob.inner(p, h)

    hypergrad.unrolled(inner, lambda traj, h: traj.outputs[0] + 0 * prob.validation(traj.params[-1], h),
                       prob.params, prob.hparams, optim.sgd(0.1), steps=3)  # fmt: skip
    assert len(calls) == 3  # the three steps; outputs[0] reuses the first step's forward pass
    calls.clear()
    hypergrad.unrolled(inner, lambda traj, h: traj.outputs[-1], prob.params, prob.hparams, optim.sgd(0.1), steps=3)
    assert len(calls) == 4


def test_unrolled_runs_under_vmap_over_stacked_params():
    """Several independent inner problems (seeds) in one call: vmap of the func backend."""
    prob = mlp_problem()
    gen = torch.Generator().manual_seed(5)
    stacked = {k: torch.stack([v + 0.1 * torch.randn(v.shape, generator=gen, dtype=DT) for _ in range(3)])
               for k, v in prob.params.items()}  # fmt: skip
    opt = OPTIMIZERS["adam"]()

    def one(params):
        res = hypergrad.unrolled(prob.inner, prob.outer, params, prob.hparams, opt, steps=2)
        return res.grads, res.outer

    grads, outer = torch.func.vmap(one)(stacked)
    for i in range(3):
        single = hypergrad.unrolled(prob.inner, prob.outer, {k: v[i] for k, v in stacked.items()}, prob.hparams, opt, steps=2)
        assert rel_err({k: g[i] for k, g in grads.items()}, single.grads) <= 1e-12
        assert torch.allclose(outer[i], single.outer, rtol=1e-12)


# ----------------------------------------------------------------------------- truncation


def hand_truncated(prob, lr, steps, t):
    """SGD hypergradient by hand: k - t steps without graph, then t differentiated steps."""
    p = {k: v.clone() for k, v in prob.params.items()}
    for _ in range(steps - t):
        q = {k: v.detach().requires_grad_() for k, v in p.items()}
        grads = torch.autograd.grad(prob.inner(q, prob.hparams), list(q.values()))
        p = {k: (v - lr * gr).detach() for (k, v), gr in zip(p.items(), grads)}
    h = {k: v.clone().requires_grad_() for k, v in prob.hparams.items()}
    p = {k: v.requires_grad_() for k, v in p.items()}
    for _ in range(t):
        grads = torch.autograd.grad(prob.inner(p, h), list(p.values()), create_graph=True)
        p = {k: v - lr * gr for (k, v), gr in zip(p.items(), grads)}
    return dict(zip(h, torch.autograd.grad(prob.validation(p, h), list(h.values()))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncate(backend):
    prob, opt, k = mlp_problem(), optim.sgd(lr=0.3), 4
    run = lambda t: hypergrad.unrolled(  # noqa: E731
        prob.inner, prob.outer, prob.params, prob.hparams, opt, steps=k, backend=backend, truncate=t
    )
    full, same, short = run(None), run(k), run(1)
    assert rel_err(same, full) <= 1e-12
    assert rel_err(short, full) > 1e-2  # dropping three steps changes the answer
    assert rel_err(short.grads, hand_truncated(prob, 0.3, k, 1)) <= 1e-8
    assert rel_err(full.grads, hand_truncated(prob, 0.3, k, k)) <= 1e-8
    assert torch.allclose(short.outer, full.outer, rtol=1e-12, atol=0)  # same forward trajectory
    assert len(short.params) == k + 1


# ----------------------------------------------------------------------------- gradcheck


class _OuterOfHparams(torch.autograd.Function):
    """hparams -> outer loss after the inner steps, with our hypergradient as its backward."""

    @staticmethod
    def forward(ctx, backend, alpha, mix):
        prob = mlp_problem()
        hg = hypergrad.unrolled(
            prob.inner, prob.outer, prob.params, {"alpha": alpha, "mix": mix}, OPTIMIZERS["adam"](),
            steps=2, backend=backend,
        )
        ctx.save_for_backward(hg.grads["alpha"], hg.grads["mix"])
        return hg.outer.clone()

    @staticmethod
    def backward(ctx, grad_out):
        g_alpha, g_mix = ctx.saved_tensors
        return None, grad_out * g_alpha, grad_out * g_mix


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    h = mlp_problem().hparams
    alpha = h["alpha"].clone().requires_grad_()
    mix = h["mix"].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, m: _OuterOfHparams.apply(backend, a, m), (alpha, mix), eps=1e-6, atol=1e-8, rtol=1e-5
    )


# ----------------------------------------------------------------------------- ridge closed form


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_matches_ridge_closed_form(method):
    prob = ridge_problem()
    exact = prob.closed_form(prob.hparams)
    hg = hypergrad.implicit(
        prob.inner, prob.outer, prob.optimum(prob.hparams), prob.hparams,
        method=method, iters=100 if method == "neumann" else 10, lr=1.0 / prob.eig_max,
    )
    err = float((hg.grads["lam"] - exact).abs().max() / exact.abs().max())
    assert err <= 1e-10, err
    assert hg.info["residual"] <= 1e-10 and hg.info["inner_grad_norm"] <= 1e-12


def test_implicit_cg_uses_at_most_dim_iterations_and_short_neumann_is_inexact():
    prob = ridge_problem()
    opt_w, exact = prob.optimum(prob.hparams), prob.closed_form(prob.hparams)
    cg = hypergrad.implicit(prob.inner, prob.outer, opt_w, prob.hparams, method="cg", iters=50)
    assert cg.info["iters"] <= 4
    short = hypergrad.implicit(prob.inner, prob.outer, opt_w, prob.hparams, method="neumann", iters=3, lr=0.1)
    assert float((short.grads["lam"] - exact).abs().max() / exact.abs().max()) > 1e-2


def test_implicit_damping_biases_the_answer():
    prob = ridge_problem()
    opt_w, exact = prob.optimum(prob.hparams), prob.closed_form(prob.hparams)
    damped = hypergrad.implicit(prob.inner, prob.outer, opt_w, prob.hparams, damping=0.5)
    assert float((damped.grads["lam"] - exact).abs().max() / exact.abs().max()) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_unrolled_sgd_matches_ridge_closed_form(backend):
    prob = ridge_problem()
    exact = prob.closed_form(prob.hparams)
    hg = hypergrad.unrolled(
        prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(lr=1.0 / prob.eig_max), steps=100, backend=backend
    )
    err = float((hg.grads["lam"] - exact).abs().max() / exact.abs().max())
    assert err <= 1e-10, err
    short = hypergrad.unrolled(
        prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(lr=1.0 / prob.eig_max), steps=5, backend=backend
    )
    assert float((short.grads["lam"] - exact).abs().max() / exact.abs().max()) > 1e-2


# ----------------------------------------------------------------------------- check


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_agrees_with_unrolled_on_mlp(backend):
    prob = mlp_problem()
    fn = lambda h: hypergrad.unrolled(  # noqa: E731
        prob.inner, prob.outer, prob.params, h, OPTIMIZERS["adam_wd_schedule"](), steps=3, backend=backend
    )
    assert hypergrad.check(fn, prob.hparams) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_agrees_with_unrolled_on_ridge(backend):
    prob = ridge_problem()
    fn = lambda h: hypergrad.unrolled(  # noqa: E731
        prob.inner, prob.outer, prob.params, h, optim.sgd(lr=0.2, momentum=0.5), steps=10, backend=backend
    )
    assert hypergrad.check(fn, prob.hparams) <= 1e-6


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_check_agrees_with_implicit(method):
    prob = ridge_problem()
    fn = lambda h: hypergrad.implicit(  # noqa: E731  (re-solves the inner problem at each h)
        prob.inner, prob.outer, prob.optimum(h), h, method=method, iters=100, lr=1.0 / prob.eig_max
    )
    assert hypergrad.check(fn, prob.hparams) <= 1e-6


def test_check_catches_wrong_gradients():
    prob = mlp_problem()
    opt = OPTIMIZERS["sgd"]()

    def right(h):
        return hypergrad.unrolled(prob.inner, prob.outer, prob.params, h, opt, steps=2)

    def scaled(h):
        hg = right(h)
        return hg._replace(grads={k: 1.05 * v for k, v in hg.grads.items()})

    def one_sign_flipped(h):
        hg = right(h)
        mix = hg.grads["mix"].clone()
        mix[1] = -mix[1]
        return hg._replace(grads={"alpha": hg.grads["alpha"], "mix": mix})

    assert hypergrad.check(right, prob.hparams) <= 1e-6
    assert hypergrad.check(scaled, prob.hparams) >= 0.04
    assert hypergrad.check(one_sign_flipped, prob.hparams) >= 0.1
    # a first-order (truncated) hypergradient is not the derivative of the 2-step outer loss
    trunc = lambda h: hypergrad.unrolled(prob.inner, prob.outer, prob.params, h, opt, steps=2, truncate=1)  # noqa
    assert hypergrad.check(trunc, prob.hparams) >= 1e-3


def test_check_needs_float64():
    prob = mlp_problem()
    p32 = {k: v.float() for k, v in prob.params.items()}
    fn = lambda h: hypergrad.unrolled(  # noqa: E731
        lambda p, hh: prob.inner({k: v.double() for k, v in p.items()}, hh).float(),
        lambda traj, hh: prob.validation({k: v.double() for k, v in traj.params[-1].items()}, hh).float(),
        p32, h, optim.sgd(0.1),
    )
    with pytest.raises(ValueError, match="float64"):
        hypergrad.check(fn, prob.hparams)


# ----------------------------------------------------------------------------- result object


def test_hypergrad_result_is_a_named_tuple_of_detached_tensors():
    prob = mlp_problem()
    hg = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1), steps=2)
    assert isinstance(hg, tuple) and hg._fields == ("grads", "outer", "aux", "params", "opt_state", "info")
    assert set(hg.grads) == {"alpha", "mix"} and hg.grads["mix"].shape == (3,)
    assert not hg.outer.requires_grad and hg.outer.dim() == 0
    assert all(not t.requires_grad for p in hg.params for t in p.values())
    assert float(hg.outer) == pytest.approx(float(prob.validation(hg.final_params, prob.hparams)), rel=1e-12)
    assert hg.info == {"backend": "func", "steps": 2, "truncate": 2} and hg.aux is None


def test_unrolled_works_under_no_grad():
    prob = mlp_problem()
    ref = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1))
    with torch.no_grad():
        hg = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1))
    assert rel_err(hg, ref) == 0.0


# ----------------------------------------------------------------------------- zeros and errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreachable_hparam_gets_zero(backend):
    """An hparam the outer loss cannot reach (unused, or only shifting the inner loss) has derivative 0."""
    prob = mlp_problem()
    hp = dict(prob.hparams, unused=torch.tensor(1.0, dtype=DT), shift=torch.tensor(1.0, dtype=DT))
    inner = lambda p, h: prob.inner(p, h) + h["shift"]  # noqa: E731
    hg = hypergrad.unrolled(inner, prob.outer, prob.params, hp, optim.sgd(0.1), steps=2, backend=backend)
    assert float(hg.grads["unused"]) == 0.0 and float(hg.grads["shift"]) == 0.0
    assert float(hg.grads["alpha"].abs()) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_outer_loss_no_hparam_reaches_is_an_error(backend):
    prob = mlp_problem()
    inner = lambda p, h: prob.inner(p, {k: v.detach() for k, v in h.items()})  # noqa: E731
    with pytest.raises(ValueError, match="no hparam reaches the outer loss"):
        hypergrad.unrolled(inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_genuinely_zero_hypergradient_is_returned(backend):
    # relu(z) with z < 0: z is in the graph, its derivative is exactly zero
    prob = mlp_problem()
    hp = dict(prob.hparams, z=torch.tensor(-1.0, dtype=DT))
    inner = lambda p, h: prob.inner(p, h) + torch.relu(h["z"]) * sum((v**2).sum() for v in p.values())  # noqa
    hg = hypergrad.unrolled(inner, prob.outer, prob.params, hp, optim.adam(1e-2), steps=2, backend=backend)
    assert float(hg.grads["z"]) == 0.0 and float(hg.grads["alpha"].abs()) > 0


def test_implicit_returns_zero_for_unreachable_hparams():
    prob = ridge_problem()
    w = prob.optimum(prob.hparams)
    hp = dict(prob.hparams, unused=torch.tensor(0.0, dtype=DT), z=torch.tensor(-2.0, dtype=DT))
    inner = lambda p, h: prob.inner(p, h) + torch.relu(h["z"]) * (p["w"] ** 2).sum()  # noqa: E731
    hg = hypergrad.implicit(inner, prob.outer, w, hp)
    assert float(hg.grads["z"]) == 0.0 and float(hg.grads["unused"]) == 0.0
    assert float(hg.grads["lam"].abs().max()) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_scalar_losses_are_rejected(backend):
    prob = mlp_problem()
    bad_inner = lambda p, h: prob.inner(p, h) * torch.ones(2, dtype=DT)  # noqa: E731
    with pytest.raises(ValueError, match=r"inner_loss must return a scalar.*shape \(2,\)"):
        hypergrad.unrolled(bad_inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1), backend=backend)
    bad_outer = lambda traj, h: (traj.params[-1]["0.weight"] * 2.0).sum(0)  # noqa: E731
    with pytest.raises(ValueError, match=r"outer_loss must return a scalar.*shape \(4,\)"):
        hypergrad.unrolled(prob.inner, bad_outer, prob.params, prob.hparams, optim.sgd(0.1), backend=backend)
    with pytest.raises(TypeError, match="inner_loss must return a scalar Tensor or an object with a .loss"):
        hypergrad.unrolled(lambda p, h: 1.0, prob.outer, prob.params, prob.hparams, optim.sgd(0.1), backend=backend)


def test_implicit_rejects_non_scalar_outer():
    prob = ridge_problem()
    with pytest.raises(ValueError, match="outer_loss must return a scalar"):
        hypergrad.implicit(prob.inner, lambda traj, h: traj.params[-1]["w"] * 2, prob.optimum(prob.hparams), prob.hparams)


def test_mismatched_opt_state_is_reported():
    prob = mlp_problem()
    opt = optim.adam()
    other = {k.replace("2.", "9."): v for k, v in prob.params.items()}
    with pytest.raises(KeyError, match=r"opt_state\[1\]\['mu'\].*missing \['2.bias', '2.weight'\]"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, opt_state=opt.init(other))
    wrong_shape = dict(prob.params, **{"2.bias": torch.zeros(5, dtype=DT)})
    with pytest.raises(ValueError, match=r"opt_state\[1\]\['mu'\]\['2.bias'\] has shape \(5,\), expected \(3,\)"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, opt_state=opt.init(wrong_shape))
    with pytest.raises(TypeError, match="opt_state must be a sequence of 3 states"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, opt, opt_state={"mu": {}})


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_unused_by_inner_loss_gets_a_zero_gradient(backend):
    """As in the agents' steps: a parameter the loss does not use stays where it is (plain SGD)."""
    prob = mlp_problem()
    params = dict(prob.params, stray=torch.ones(2, dtype=DT))
    inner = lambda p, h: prob.inner({k: v for k, v in p.items() if k != "stray"}, h)  # noqa: E731
    hg = hypergrad.unrolled(inner, prob.outer, params, prob.hparams, optim.sgd(0.1), steps=2, backend=backend)
    assert torch.equal(hg.final_params["stray"], params["stray"])
    ref = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1), steps=2)
    assert rel_err(hg, ref) <= 1e-12


def test_bad_arguments_are_reported():
    prob = mlp_problem()
    args = (prob.inner, prob.outer, prob.params, prob.hparams, optim.sgd(0.1))
    with pytest.raises(ValueError, match=r"unknown backend 'torchopt'; choose one of \['func', 'higher', 'jvp'\]"):
        hypergrad.unrolled(*args, backend="torchopt")
    with pytest.raises(ValueError, match="unknown method 'lbfgs'"):
        hypergrad.implicit(prob.inner, prob.outer, prob.params, prob.hparams, method="lbfgs")
    with pytest.raises(ValueError, match=r"truncate must be an int in \[1, steps=3\], got 4"):
        hypergrad.unrolled(*args, steps=3, truncate=4)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        hypergrad.unrolled(*args, steps=0)
    with pytest.raises(TypeError, match=r"hparams\['alpha'\] must be a Tensor, got float"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, {"alpha": 0.1}, optim.sgd(0.1))
    with pytest.raises(TypeError, match="GradientTransformation"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, 0.1)
    with pytest.raises(TypeError, match=r"opt\(hparams\) must return a GradientTransformation"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, lambda h: 0.1)


def test_higher_backend_needs_a_torch_equivalent_but_func_and_jvp_take_any_chain():
    def init(params):
        return {"count": 0}

    def update(grads, state, params=None):  # sign-SGD: a transformation higher does not have
        return {k: -0.01 * torch.tanh(g / 1e-3) for k, g in grads.items()}, {"count": state["count"] + 1}

    sign_sgd = optim.GradientTransformation(init, update)
    prob = mlp_problem()
    with pytest.raises(ValueError, match="backend='higher' needs an optimizer with a torch.optim equivalent"):
        hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, sign_sgd, backend="higher")
    a = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, sign_sgd, steps=2, backend="func")
    b = hypergrad.unrolled(prob.inner, prob.outer, prob.params, prob.hparams, sign_sgd, steps=2, backend="jvp")
    assert rel_err(b, a) <= 1e-10


def test_implicit_solver_failures_are_explained():
    prob = ridge_problem()
    w = prob.optimum(prob.hparams)
    concave = lambda p, h: -prob.inner(p, h)  # noqa: E731
    with pytest.raises(ValueError, match="not positive definite"):
        hypergrad.implicit(concave, prob.outer, w, prob.hparams, method="cg")
    with pytest.raises(ValueError, match="diverged"):
        hypergrad.implicit(prob.inner, prob.outer, w, prob.hparams, method="neumann", iters=2000, lr=10.0)


def test_one_place_builds_an_optimizer_step():
    """Every differentiable (and first-order) step of the library goes through hypergrad.step."""
    import pathlib

    import metaconstraint

    root = pathlib.Path(metaconstraint.__file__).parent
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py") if "apply_updates(" in p.read_text()]
    assert sorted(hits) == ["hypergrad.py", "optim.py"], hits
    text = (root / "hypergrad.py").read_text()
    assert text.count("apply_updates(") == 1  # the call inside step()
