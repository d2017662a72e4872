"""Functional optimizers (metaconstraint.optim) against torch.optim, and their differentiability."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaconstraint import optim

DT = torch.float64


def _problem(seed: int = 0, dtype: torch.dtype = DT):
    """A small ReLU MLP regression problem; returns (module, x, y)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    x = torch.randn(64, 5, generator=g, dtype=dtype)
    y = torch.randn(64, 3, generator=g, dtype=dtype)
    return net, x, y


def _loss(net, params, x, y, i):
    # a different mini-batch every step so the trajectory is not trivial
    idx = torch.arange(16) + (16 * i) % 64
    return ((functional_call(net, params, (x[idx],)) - y[idx]) ** 2).mean()


def _run_pair(opt, make_torch_opt, steps=100, dtype=DT, scheduler=None):
    """Run the functional optimizer and a torch.optim one from the same start; return max rel. error per step."""
    net, x, y = _problem(dtype=dtype)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    state = opt.init(params)
    torch_opt = make_torch_opt(net.parameters())
    sched = scheduler(torch_opt) if scheduler else None
    worst = 0.0
    for i in range(steps):
        p = {k: v.requires_grad_() for k, v in params.items()}
        grads = dict(zip(p, torch.autograd.grad(_loss(net, p, x, y, i), list(p.values()))))
        with torch.no_grad():
            updates, state = opt.update(grads, state, params)
            params = optim.apply_updates(params, updates)
        params = {k: v.detach() for k, v in params.items()}

        torch_opt.zero_grad()
        _loss(net, dict(net.named_parameters()), x, y, i).backward()
        torch_opt.step()
        if sched:
            sched.step()
        for k, v in net.named_parameters():
            worst = max(worst, float((params[k] - v.detach()).norm() / v.detach().norm()))
    return worst


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_matches_torch_adam_over_100_steps(weight_decay):
    err = _run_pair(
        optim.adam(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay),
    )
    assert err <= 1e-6, err


def test_adam_with_eps_root_zero_is_torch_adam_to_rounding():
    err = _run_pair(optim.adam(lr=1e-2, eps_root=0.0), lambda ps: torch.optim.Adam(ps, lr=1e-2))
    assert err <= 1e-12, err


def test_adam_float32_matches_torch_adam():
    err = _run_pair(optim.adam(lr=1e-3), lambda ps: torch.optim.Adam(ps, lr=1e-3), dtype=torch.float32)
    assert err <= 1e-5, err


def test_adam_comparison_can_fail():
    # a different beta2 must be caught by the same comparison
    err = _run_pair(optim.adam(lr=1e-2, betas=(0.9, 0.99)), lambda ps: torch.optim.Adam(ps, lr=1e-2), steps=20)
    assert err > 1e-4


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_sgd_matches_torch_sgd(momentum, weight_decay):
    err = _run_pair(
        optim.sgd(lr=0.05, momentum=momentum, weight_decay=weight_decay),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum, weight_decay=weight_decay),
    )
    assert err <= 1e-12, err


def test_exponential_decay_matches_exponential_lr():
    schedule = optim.exponential_decay(0.1, 0.9)
    torch_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(torch_opt, gamma=0.9)
    for count in range(30):
        assert math.isclose(schedule(count), sched.get_last_lr()[0], rel_tol=1e-12)
        torch_opt.step()
        sched.step()
    assert math.isclose(schedule(5), 0.1 * 0.9**5, rel_tol=1e-15)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_schedule_inside_optimizer_matches_torch_scheduler(kind):
    if kind == "sgd":
        opt = optim.sgd(lr=optim.exponential_decay(0.05, 0.97), momentum=0.5)
        make = lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5)  # noqa: E731
    else:
        opt = optim.adam(lr=optim.exponential_decay(1e-2, 0.97))
        make = lambda ps: torch.optim.Adam(ps, lr=1e-2)  # noqa: E731
    err = _run_pair(opt, make, steps=50, scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.97))
    assert err <= 1e-6, err


def test_exponential_decay_rejects_bad_values():
    with pytest.raises(ValueError, match="gamma"):
        optim.exponential_decay(0.1, 1.5)


def test_apply_updates_is_out_of_place_and_keeps_graph():
    w = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
    params = {"w": torch.tensor([0.5, -0.5], dtype=DT)}
    new = optim.apply_updates(params, {"w": 3.0 * w})
    assert torch.equal(params["w"], torch.tensor([0.5, -0.5], dtype=DT))  # untouched
    assert torch.allclose(new["w"], torch.tensor([3.5, 5.5], dtype=DT))
    (g,) = torch.autograd.grad(new["w"].sum(), w)
    assert torch.allclose(g, torch.full((2,), 3.0, dtype=DT))


def test_apply_updates_rejects_mismatched_trees():
    params = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(KeyError, match=r"missing \['b'\].*unexpected \['c'\]"):
        optim.apply_updates(params, {"a": torch.zeros(2), "c": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"\['b'\] has shape \(4,\), expected \(3,\)"):
        optim.apply_updates(params, {"a": torch.zeros(2), "b": torch.zeros(4)})


def test_update_rejects_grads_that_do_not_match_state():
    opt = optim.adam()
    state = opt.init({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"adam.update grads\['w'\] has shape \(2,\)"):
        opt.update({"w": torch.zeros(2)}, state, None)
    with pytest.raises(ValueError, match=r"grads\['w'\] is None"):
        opt.update({"w": None}, state, None)


def test_detach_state_detaches_nested_and_keeps_the_rest():
    w = torch.ones(2, requires_grad=True)
    state = {"count": 3, "mu": {"w": w * 2}, "hist": [w * 3, (w * 4, "tag")]}
    out = optim.detach_state(state)
    assert out["count"] == 3
    assert not out["mu"]["w"].requires_grad and out["mu"]["w"].grad_fn is None
    assert torch.equal(out["mu"]["w"], torch.full((2,), 2.0))
    assert isinstance(out["hist"], list) and isinstance(out["hist"][1], tuple) and out["hist"][1][1] == "tag"
    assert not out["hist"][1][0].requires_grad
    assert state["mu"]["w"].requires_grad  # the original is untouched


def test_adam_state_round_trips_through_torch_save(tmp_path):
    opt = optim.adam()
    params = {"w": torch.randn(3)}
    _, state = opt.update({"w": torch.randn(3)}, opt.init(params), params)
    torch.save(state, tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)
    assert back[1]["count"] == 1 and torch.equal(back[1]["nu"]["w"], state[1]["nu"]["w"])
    optim.check_state(opt.init(params), back)


def _first_step_hypergrad(eps_root: float) -> torch.Tensor:
    """d outer / d h through one Adam step from params where one gradient entry is exactly zero.

    inner = h * sum(w**2) has gradient 2 h w, exactly zero at w[0] = 0; the derivative of
    sqrt(v) at v = 0 is infinite, and 0 * inf = NaN unless eps_root > 0. A first Adam step
    is ~ -lr * sign(g), whose derivative is of order eps / |g|, so eps is large here to give
    finite differences something to resolve.
    """
    h = torch.tensor(0.7, dtype=DT, requires_grad=True)
    w = torch.tensor([0.0, 1.0, -2.0], dtype=DT, requires_grad=True)
    opt = optim.adam(lr=0.1, eps=0.1, eps_root=eps_root)
    (g,) = torch.autograd.grad(h * (w**2).sum(), w, create_graph=True)
    updates, _ = opt.update({"w": g}, opt.init({"w": w}), {"w": w})
    new_w = optim.apply_updates({"w": w}, updates)["w"]
    outer = ((new_w - torch.tensor([0.3, 0.2, 0.1], dtype=DT)) ** 2).sum()
    (hg,) = torch.autograd.grad(outer, h)
    return hg


def test_adam_is_differentiable_at_its_first_step():
    assert not torch.isfinite(_first_step_hypergrad(0.0)).all()  # the failure eps_root exists for
    hg = _first_step_hypergrad(1e-16)
    assert torch.isfinite(hg).all()

    # and the finite value is the right one (central differences through the same step)
    def outer_at(hv: float) -> float:
        w = torch.tensor([0.0, 1.0, -2.0], dtype=DT)
        opt = optim.adam(lr=0.1, eps=0.1, eps_root=1e-16)
        updates, _ = opt.update({"w": 2 * hv * w}, opt.init({"w": w}), {"w": w})
        nw = w + updates["w"]
        return float(((nw - torch.tensor([0.3, 0.2, 0.1], dtype=DT)) ** 2).sum())

    e = 1e-6
    fd = (outer_at(0.7 + e) - outer_at(0.7 - e)) / (2 * e)
    assert abs(float(hg) - fd) <= 1e-6 * max(abs(fd), 1e-12), (float(hg), fd)


def test_adam_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="betas"):
        optim.adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps_root"):
        optim.adam(eps_root=-1.0)
