"""Tests of the exact toy-MDP quantities and of the improvement-bound checks (theory/README.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "theory"))  # theory/toymdp.py, as theory/check_bound.py imports it

import toymdp as tm  # noqa: E402


def _load_check_bound():
    spec = importlib.util.spec_from_file_location("check_bound", ROOT / "theory" / "check_bound.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_bound"] = module
    spec.loader.exec_module(module)
    return module


cb = _load_check_bound()


# ---------------------------------------------------------------- hand-computed example


def test_two_state_example_matches_hand_computation() -> None:
    mdp, pi, pi_new, ds, da = tm.two_state_example()
    ev = tm.evaluate_policies(mdp, np.stack([pi, pi_new]))
    # pi stays in state 0 with reward 0; pi' earns 1 in state 0, 2 in state 1
    np.testing.assert_allclose(ev.V[0], [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(ev.V[1], [8 / 3, 4.0], rtol=1e-14)
    np.testing.assert_allclose(ev.d[0], [1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(ev.d[1], [2 / 3, 1 / 3], rtol=1e-14)
    np.testing.assert_allclose(ev.J, [0.0, 8 / 3], rtol=1e-14, atol=1e-15)
    Q = tm.q_values(mdp, ev.V[0], np.array([0, 0, 1, 1]), np.array([[0.0], [1.0], [0.0], [1.0]]))
    np.testing.assert_allclose(Q, [0.0, 1.0, 0.0, 2.0], atol=1e-15)

    out = tm.compare_policies(mdp, pi, pi_new[None], mdp.grid)
    expected = {
        "improvement": 8 / 3,
        "pdl_error": 0.0,
        "shift": 2 / 3,
        "shift_bound_old": 1.0,  # gamma/(1-gamma) * E_{d^pi} ||dP||_1 = 1 * 1
        "shift_bound_new": 1.0,
        "L_P": 1.0,
        "L_Q": 2.0,  # Q^pi(1, .) moves by 2 over a unit step
        "delta": 1.0,
        "delta_mean": 1.0,
        "dQ": 1.0,  # E_{d^pi} A^pi(s, pi'(s)) = A^pi(0, 1) = 1
        "adv_max": 2.0,
        "phi_pair": 2.0,
        "phi_mix": 2.0,
        "phi_delta": 2.0,  # gamma L_P L_Q delta^2 / (1 - gamma) = 0.5 * 1 * 2 * 1 / 0.5
    }
    for key, value in expected.items():
        assert out[key][0] == pytest.approx(value, abs=1e-13), key
    np.testing.assert_allclose(out["adv"][0], [1.0, 2.0], atol=1e-15)

    B, dB, delta_d = tm.bc_quantities(pi[ds], pi_new[ds], da)
    assert (B, dB, delta_d) == (1.0, 1.0, 1.0)
    assert tm.phi_bc(0.5, 1.0, 2.0, B, dB) == pytest.approx(6 + 4 * math.sqrt(2), rel=1e-14)
    # the bound itself: (dQ - Phi)/(1 - gamma) = -2 <= 8/3
    assert (out["dQ"][0] - out["phi_delta"][0]) / 0.5 == pytest.approx(-2.0)


def test_lipschitz_constant_is_max_ratio_over_pairs() -> None:
    # three actions 0, 1, 3 in R; ratios 0 / 1 (0->1), 3 / 2 (1->3), 3 / 3 (0->3)
    assert tm.lipschitz_constant(np.array([[0.0, 0.0, 3.0]]), np.array([[0.0], [1.0], [3.0]])) == pytest.approx(1.5)
    # L1 version with unsorted actions
    vals = np.array([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])  # actions 2, 0, 1
    assert tm.lipschitz_constant(vals, np.array([[2.0], [0.0], [1.0]])) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for k in (1, 2):
        acts = rng.normal(size=(7, k))
        v = rng.normal(size=(3, 7, 4))
        brute = max(
            np.abs(v[s, i] - v[s, j]).sum() / np.linalg.norm(acts[i] - acts[j])
            for s in range(3)
            for i in range(7)
            for j in range(7)
            if i != j
        )
        assert tm.lipschitz_constant(v, acts) == pytest.approx(brute, rel=1e-12)


def test_tight_two_state_uses_predicted_share_of_phi() -> None:
    for gamma, c, L, delta in [(0.9, 0.3, 1.0, 0.01), (0.99, 0.5, 2.0, 1e-3), (0.5, 0.1, 1.0, 0.5)]:
        mdp, pi, new, ds, da = tm.tight_two_state(gamma, c, L, delta)
        out = tm.compare_policies(mdp, pi, new[None], mdp.grid)
        assert out["L_P"][0] == pytest.approx(2 * c)
        assert out["L_Q"][0] == pytest.approx(L)
        assert out["dQ"][0] == pytest.approx(L * delta)
        usage = (out["dQ"][0] - (1 - gamma) * out["improvement"][0]) / out["phi_delta"][0]
        assert usage == pytest.approx((1 - gamma) / (1 - gamma + gamma * c * delta), rel=1e-9)
        assert usage < 1.0


# ---------------------------------------------------------------- gradients


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("k", [1, 2])
def test_q_action_grad_matches_finite_differences_tabular(k: int) -> None:
    rng = np.random.default_rng(1)
    mdp = tm.random_tabular_mdp(rng, 6, k, 5, 0.9, sensitivity=1.0)
    pi = rng.uniform(-1, 1, size=(6, k))
    V = tm.evaluate_policies(mdp, pi).V[0]
    s = np.array([2])
    a = rng.uniform(-0.8, 0.8, size=(1, k))
    num = _fd(lambda x: tm.q_values(mdp, V, s, x)[0], a)
    np.testing.assert_allclose(tm.q_action_grad(mdp, V, s, a), num, rtol=1e-6, atol=1e-8)


def test_lq_transition_rows_gradient_and_lipschitz() -> None:
    sysm = tm.ClippedLQ(a=1.1, b=-0.5, sigma=0.1, q=1.0, rho=0.2, gamma=0.9)
    mdp = sysm.discretise(60)
    x = np.array([-0.95, 0.0, 0.7])
    u = np.array([0.3, -0.9, 1.0])
    P = mdp.transition_at(x, u)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-14)
    assert np.all(P >= 0)
    num = (mdp.transition_at(x, u + 1e-6) - mdp.transition_at(x, u - 1e-6)) / 2e-6
    np.testing.assert_allclose(mdp.transition_grad_at(x, u), num, atol=1e-6)
    L_P = tm.transition_lipschitz(mdp, np.linspace(-1, 1, 81)[:, None])
    assert 0.5 * sysm.transition_lipschitz_bound < L_P <= sysm.transition_lipschitz_bound


def test_td3bc_actor_step_is_a_gradient_step() -> None:
    rng = np.random.default_rng(2)
    mdp = tm.random_tabular_mdp(rng, 5, 1, 11, 0.8)
    feats = rng.normal(size=(5, 3))
    ds = np.array([0, 1, 2, 3, 4, 1])
    da = rng.uniform(-1, 1, size=(6, 1))
    theta = 0.3 * rng.normal(size=(3, 1))
    V = tm.evaluate_policies(mdp, tm.tanh_linear_policy(feats, theta)).V[0]

    def qg(acts):
        return tm.q_values(mdp, V, ds, acts), tm.q_action_grad(mdp, V, ds, acts)

    alpha, lr = 2.5, 0.1
    lam = alpha / np.mean(np.abs(qg(np.tanh(feats[ds] @ theta))[0]))  # held fixed, as TD3+BC detaches it

    def loss(th):
        act = np.tanh(feats[ds] @ th)
        return np.mean(-lam * tm.q_values(mdp, V, ds, act) + np.sum((act - da) ** 2, axis=1))

    new = tm.td3bc_actor_step(theta, feats[ds], da, qg, alpha, lr)
    np.testing.assert_allclose((theta - new) / lr, _fd(loss, theta), rtol=1e-5, atol=1e-8)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="gamma"):
        tm.ClippedLQ(a=1, b=1, sigma=0.1, q=1, rho=1, gamma=1.0)
    mdp, pi, _, _, _ = tm.two_state_example()
    with pytest.raises(ValueError, match="policies must have shape"):
        tm.evaluate_policies(mdp, np.zeros((3, 1)))
    with pytest.raises(ValueError, match="instances"):
        cb.run(0)


# ---------------------------------------------------------------- the checks at CI size


@pytest.fixture(scope="module")
def small_run():
    return cb.run(240, seed=7, lq_instances=2, tight_instances=12, lq_resolutions=(50, 100), lq_reference=400)


def test_no_violations_and_pdl_round_off(small_run) -> None:
    summary, rec = small_run
    assert summary["pairs"] >= 240 * 10
    assert summary["total_violations"] == 0, summary["violations"]
    assert summary["pdl_max_error"] < 1e-10
    assert summary["occupancy_identity_max_error"] < 1e-10
    # the checks were not vacuous: Theorem 4.4 applied to many steps, incl. real TD3+BC steps
    assert summary["checked"]["thm44_phi_delta"] > 100
    train = rec["family"] == cb.FAMILIES["train_td3bc"]
    assert np.sum(train & (rec["dQ"] >= rec["phi_delta"])) > 50
    assert summary["checked"]["bound_phi_bc"] > 1000
    assert set(summary["gammas"]) >= {0.5, 0.9, 0.99}
    # some steps with dQ > 0 lower the return: the threshold Phi is needed
    assert summary["informative"]["dQ_positive_but_return_decreased"] > 0


def test_negative_control_finds_violations(small_run) -> None:
    summary, rec = small_run
    neg = summary["negative_control_violations"]
    assert neg["phi_zero"] > 0
    assert neg["phi_delta_div10"] > 0
    assert neg["phi_bc_div10"] > 0
    # and the checker itself flags a shrunken penalty
    broken = dict(rec)
    broken["phi_delta"] = rec["phi_delta"] / 10.0
    assert cb.evaluate_checks(broken)["violations"]["bound_phi_delta"] > 0


def test_lq_checked_at_two_resolutions(small_run) -> None:
    summary, rec = small_run
    disc = summary["lq_discretisation"]
    assert disc["lq_coarse"]["cells"] == 50 and disc["lq_fine"]["cells"] == 100
    assert disc["lq_fine"]["max_abs_error_J"] < disc["lq_coarse"]["max_abs_error_J"]
    assert summary["violations_by_source"]["lq_fine"]["bound_phi_delta"] == 0
    assert summary["checked"]["lq_transition_lipschitz_analytic"] > 0


def test_cli_writes_json_and_plots(tmp_path) -> None:
    out = tmp_path / "summary.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "theory" / "check_bound.py"), "--instances", "15", "--lq", "0", "--tight", "3",
         "--seed", "3", "--json", str(out), "--plots", str(tmp_path / "plots")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    for key in ("instances", "violations", "pdl_max_error", "negative_control_violations", "median_tightness", "worst_slack"):
        assert key in summary
    assert summary["instances"] == 18
    for name in ("bound_vs_improvement.png", "slack_histogram.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000
