"""Numerically check the policy-improvement bound of theory/README.md on toy MDPs.

    python theory/check_bound.py --instances N [--seed S] [--json OUT.json] [--plots DIR]

Each of the N tabular instances is a random :class:`SmoothTabularMDP` (gamma, size, grid
and transition sensitivity drawn at random), with a behaviour dataset, a base policy,
six policy steps on the action grid (random and greedy, local and global) and a short
TD3+BC actor trajectory (exact critic, continuous actions). Besides, ``--lq`` instances
(default N // 100, at least 2) of the bounded linear-quadratic system are checked at two
grid resolutions, with a finer grid as reference for the discretisation error, and
``--tight`` instances (default N // 100, at least 10) of a two-state family on which the
penalty is nearly attained show that the constant is sharp and that the check can fail.

Every number is exact up to float64 round-off; an inequality counts as violated when it
fails by more than ``TOL_REL * (1 + |J| + |J'|)``. See theory/README.md for the statements.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

import toymdp as tm  # theory/toymdp.py, beside this script

GAMMAS = (0.5, 0.8, 0.9, 0.95, 0.99)
# (action_dim, n_states, grid points per axis)
TABULAR_SIZES = [(1, s, m) for s in (2, 3, 5, 10, 20, 40) for m in (11, 21, 41)] + [
    (2, s, m) for s in (2, 3, 5, 10, 20) for m in (5, 7)
]
ALPHAS = (0.1, 1.0, 2.5, 10.0)
LEARNING_RATES = (0.03, 0.1, 0.3)
TRAIN_STEPS = 4
LQ_GAMMAS = (0.8, 0.9, 0.95)
LQ_RESOLUTIONS = (100, 200)
LQ_REFERENCE = 800
LQ_ACTION_POINTS = 101
TOL_REL = 1e-10
PDL_LIMIT = 1e-10

FAMILIES = {
    "grid_random_local": 0,
    "grid_random_global": 1,
    "grid_greedy_local": 2,
    "grid_greedy_global": 3,
    "train_td3bc": 4,
    "lq_random": 5,
    "lq_policy_gradient": 6,
    "lq_train_td3bc": 7,
    "tight_two_state": 8,
}
SOURCES = {"tabular": 0, "lq_coarse": 1, "lq_fine": 2, "tight": 3}


# --------------------------------------------------------------------------------------
# Tabular instances
# --------------------------------------------------------------------------------------


def _grid_policy(axis: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Actions of a grid policy given per-dimension grid indices (S, k)."""
    return axis[idx]


def _local_move(rng: np.random.Generator, idx: np.ndarray, mask: np.ndarray, step: int, m: int) -> np.ndarray:
    """Move the grid index of the masked states by a random nonzero offset in {-step..step}^k."""
    out = idx.copy()
    k = idx.shape[1]
    for _ in range(20):
        off = rng.integers(-step, step + 1, size=idx.shape)
        zero = np.all(off == 0, axis=1)
        off[zero, rng.integers(k, size=zero.sum())] = step
        cand = np.clip(idx + off * mask[:, None], 0, m - 1)
        if np.any(cand != idx):
            return cand
    out[np.argmax(mask), 0] = (idx[np.argmax(mask), 0] + 1) % m
    return out


def _random_mask(rng: np.random.Generator, n: int, allowed: np.ndarray) -> np.ndarray:
    frac = rng.uniform(0.1, 1.0)
    mask = (rng.random(n) < frac) & allowed
    if not mask.any():
        mask[rng.choice(np.flatnonzero(allowed))] = True
    return mask


def tabular_instance(rng: np.random.Generator, instance: int) -> dict[str, np.ndarray]:
    """One random tabular instance: six grid steps and a TD3+BC trajectory, all quantities."""
    k, n_s, m = TABULAR_SIZES[rng.integers(len(TABULAR_SIZES))]
    gamma = float(rng.choice(GAMMAS))
    sens = float(np.exp(rng.uniform(np.log(0.05), np.log(2.0))))
    mdp = tm.random_tabular_mdp(rng, n_s, k, m, gamma, sensitivity=sens, r_width=rng.uniform(0.3, 1.0))
    axis = np.linspace(-1.0, 1.0, m)
    grid = mdp.grid
    n_a = grid.shape[0]
    all_states = np.repeat(np.arange(n_s), n_a)
    grid_idx = np.stack(np.meshgrid(*([np.arange(m)] * k), indexing="ij"), -1).reshape(-1, k)

    # behaviour policy (myopic-greedy on half the states, random elsewhere) and its dataset
    r_table = mdp.reward(all_states, np.tile(grid, (n_s, 1))).reshape(n_s, n_a)
    beta = np.where(rng.random(n_s) < 0.5, r_table.argmax(1), rng.integers(n_a, size=n_s))
    beta_idx = grid_idx[beta]
    if rng.random() < 0.75:
        data_states = np.repeat(np.arange(n_s), rng.integers(1, 4))
    else:  # partial coverage: as many samples as states, drawn at random
        data_states = rng.integers(n_s, size=n_s)
    noise = float(rng.choice([0.0, 0.1, 0.3]))
    raw = _grid_policy(axis, beta_idx[data_states]) + noise * rng.normal(size=(len(data_states), k))
    data_idx = np.clip(np.rint((raw + 1.0) / (2.0 / (m - 1))).astype(int), 0, m - 1)
    data_actions = axis[data_idx]
    in_data = np.zeros(n_s, bool)
    in_data[data_states] = True
    mu_data = np.bincount(data_states, minlength=n_s) / len(data_states)

    # base policy on the grid
    mode = rng.integers(3)
    if mode == 0:
        base_idx = beta_idx.copy()
    elif mode == 1:
        base_idx = _local_move(rng, beta_idx, rng.random(n_s) < 0.5, 1, m)
    else:
        base_idx = grid_idx[rng.integers(n_a, size=n_s)]
    pi = _grid_policy(axis, base_idx)
    ev_pi = tm.evaluate_policies(mdp, pi)
    q_grid = tm.q_values(mdp, ev_pi.V[0], all_states, np.tile(grid, (n_s, 1))).reshape(n_s, n_a)

    # six grid steps
    news, fams = [], []
    for fam in ("grid_random_local", "grid_random_local", "grid_random_global", "grid_greedy_local", "grid_greedy_local", "grid_greedy_global"):
        allowed = in_data if rng.random() < 0.5 else np.ones(n_s, bool)
        mask = _random_mask(rng, n_s, allowed)
        if fam == "grid_random_local":
            new_idx = _local_move(rng, base_idx, mask, int(rng.choice([1, 2, 4])), m)
        elif fam == "grid_random_global":
            new_idx = np.where(mask[:, None], grid_idx[rng.integers(n_a, size=n_s)], base_idx)
        else:
            radius = int(rng.choice([1, 2])) if fam == "grid_greedy_local" else m
            dist = np.abs(grid_idx[None, :, :] - base_idx[:, None, :]).max(axis=2)  # (S, nA)
            best = np.where(dist <= radius, q_grid, -np.inf).argmax(axis=1)
            new_idx = np.where(mask[:, None], grid_idx[best], base_idx)
        if np.all(new_idx == base_idx):  # already greedy there: take a random local step instead
            new_idx = _local_move(rng, base_idx, mask, 1, m)
            fam = "grid_random_local"
        news.append(_grid_policy(axis, new_idx))
        fams.append(FAMILIES[fam])
    news = np.stack(news)

    # TD3+BC trajectory: linear-tanh actor on random state features, exact critic
    n_f = max(2, n_s // 2)
    feats = rng.normal(size=(n_s, n_f)) / np.sqrt(n_f)
    theta, *_ = np.linalg.lstsq(feats[data_states], np.arctanh(np.clip(data_actions, -0.9, 0.9)), rcond=None)
    alpha = float(rng.choice(ALPHAS))
    lr = float(rng.choice(LEARNING_RATES))
    traj = [tm.tanh_linear_policy(feats, theta)]
    traj_ev = [tm.evaluate_policies(mdp, traj[0])]
    for _ in range(TRAIN_STEPS):
        V = traj_ev[-1].V[0]

        def q_and_grad(acts: np.ndarray, V: np.ndarray = V) -> tuple[np.ndarray, np.ndarray]:
            return tm.q_values(mdp, V, data_states, acts), tm.q_action_grad(mdp, V, data_states, acts)

        theta = tm.td3bc_actor_step(theta, feats[data_states], data_actions, q_and_grad, alpha, lr)
        traj.append(tm.tanh_linear_policy(feats, theta))
        traj_ev.append(tm.evaluate_policies(mdp, traj[-1]))
    traj = np.stack(traj)

    # Lipschitz constants over A_s = grid + every action any policy of this instance takes at s
    ev_news = tm.evaluate_policies(mdp, news)
    values = np.concatenate([ev_pi.V, ev_news.V, np.concatenate([e.V for e in traj_ev])])
    extra = tm.policy_actions_per_state(pi, news, traj)
    L_P, L_Q = tm.lipschitz_constants(mdp, grid, extra, values)
    lq_base, lq_news, lq_traj = L_Q[0], L_Q[1 : 1 + len(news)], L_Q[1 + len(news) :]

    rows = []
    out = tm.compare_policies(mdp, pi, news, grid, ev_old=ev_pi, L_P=L_P, L_Q=lq_base)
    rows.append(_with_data(out, pi, news, data_states, data_actions, in_data, mu_data, ev_pi.d[0]))
    rows[-1]["L_Q_new"] = lq_news
    rows[-1]["family"] = np.array(fams)
    rows[-1]["step"] = np.zeros(len(news), int)
    for t in range(TRAIN_STEPS):
        out = tm.compare_policies(mdp, traj[t], traj[t + 1][None], grid, ev_old=traj_ev[t], L_P=L_P, L_Q=lq_traj[t])
        rows.append(_with_data(out, traj[t], traj[t + 1][None], data_states, data_actions, in_data, mu_data, traj_ev[t].d[0]))
        rows[-1]["L_Q_new"] = lq_traj[t + 1 : t + 2]
        rows[-1]["family"] = np.array([FAMILIES["train_td3bc"]])
        rows[-1]["step"] = np.array([t + 1])
    res = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    n = len(res["improvement"])
    res.update(
        instance=np.full(n, instance),
        source=np.full(n, SOURCES["tabular"]),
        n_states=np.full(n, n_s),
        action_dim=np.full(n, k),
        grid_points=np.full(n, m),
        alpha=np.where(res["family"] == FAMILIES["train_td3bc"], alpha, np.nan),
        eta=np.zeros(n),
        improvement_ref=np.full(n, np.nan),
        lp_analytic=np.full(n, np.nan),
    )
    return res


def _with_data(
    out: dict[str, np.ndarray],
    pi: np.ndarray,
    news: np.ndarray,
    data_states: np.ndarray,
    data_actions: np.ndarray,
    in_data: np.ndarray,
    mu_data: np.ndarray,
    d_old: np.ndarray,
) -> dict[str, np.ndarray]:
    """Add the BC quantities, the coverage flag and the data-weighted dQ to a comparison."""
    keep = {k: v for k, v in out.items() if k not in ("V_new", "d_new", "adv")}
    B, dB, dD, cov = [], [], [], []
    for j, new in enumerate(news):
        b, db, dd = tm.bc_quantities(pi[data_states], new[data_states], data_actions)
        changed = np.linalg.norm(new - pi, axis=1) > 0
        visited = (d_old > 0) | (out["d_new"][j] > 0)
        B.append(b)
        dB.append(db)
        dD.append(dd)
        cov.append(bool(np.all(in_data[changed & visited])))
    keep.update(
        B=np.array(B),
        dB=np.array(dB),
        delta_data=np.array(dD),
        covered=np.array(cov),
        dQ_data=out["adv"][:, data_states].mean(axis=1),
        mismatch=np.full(len(news), np.abs(d_old - mu_data).sum()),
    )
    return keep


def tight_instance(rng: np.random.Generator, instance: int) -> dict[str, np.ndarray]:
    """The two-state family on which Phi_delta is nearly attained (sharpness; negative control)."""
    gamma = float(rng.choice(GAMMAS))
    c = rng.uniform(0.05, 0.5)
    L = rng.uniform(0.5, 2.0)
    delta = float(np.exp(rng.uniform(np.log(1e-3), np.log(0.5))))
    mdp, pi, new, ds, da = tm.tight_two_state(gamma, c, L, delta)
    ev = tm.evaluate_policies(mdp, pi)
    out = tm.compare_policies(mdp, pi, new[None], mdp.grid, ev_old=ev)
    ev_new = tm.evaluate_policies(mdp, new)
    lq_new = tm.critic_lipschitz(mdp, ev_new.V[0], mdp.grid, tm.policy_actions_per_state(pi, new))
    res = _with_data(out, pi, new[None], ds, da, np.ones(2, bool), np.array([0.5, 0.5]), ev.d[0])
    res.update(
        L_Q_new=np.array([lq_new]),
        family=np.array([FAMILIES["tight_two_state"]]),
        step=np.zeros(1, int),
        instance=np.array([instance]),
        source=np.array([SOURCES["tight"]]),
        n_states=np.array([2]),
        action_dim=np.array([1]),
        grid_points=np.array([2]),
        alpha=np.array([np.nan]),
        eta=np.zeros(1),
        improvement_ref=np.array([np.nan]),
        lp_analytic=np.array([np.nan]),
    )
    return res


# --------------------------------------------------------------------------------------
# Bounded linear-quadratic system
# --------------------------------------------------------------------------------------


def _lq_features(x: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(x), x], axis=1)


def _lq_policy(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """pi_theta(x) = tanh(theta0 + theta1 x) with theta (2, 1), as actions (n, 1)."""
    return np.tanh(_lq_features(x) @ theta)


def _lq_q_and_grad(mdp: tm.DiscretisedLQ, V: np.ndarray, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = mdp.reward_at(x, u) + mdp.gamma * mdp.transition_at(x, u) @ V
    dq = -2.0 * mdp.system.rho * u + mdp.gamma * mdp.transition_grad_at(x, u) @ V
    return q, dq


def lq_instance(
    rng: np.random.Generator,
    instance: int,
    resolutions: tuple[int, ...] = LQ_RESOLUTIONS,
    reference: int = LQ_REFERENCE,
    action_points: int = LQ_ACTION_POINTS,
) -> dict[str, np.ndarray]:
    """One bounded LQ system: random, policy-gradient and TD3+BC steps, checked at each resolution."""
    sysm = tm.ClippedLQ(
        a=rng.uniform(0.7, 1.2),
        b=rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.8),
        sigma=rng.uniform(0.05, 0.3),
        q=rng.uniform(0.5, 1.5),
        rho=rng.uniform(0.05, 0.5),
        gamma=float(rng.choice(LQ_GAMMAS)),
    )
    # behaviour: noisy clipped linear feedback; data states spread over [-1, 1]
    n_data = 300
    x_data = rng.uniform(-1.0, 1.0, n_data)
    gain, offset = rng.uniform(0.2, 1.5), rng.uniform(-0.2, 0.2)
    noise = float(rng.choice([0.0, 0.05, 0.2]))
    a_data = np.clip(-gain * x_data + offset + noise * rng.normal(size=n_data), -1.0, 1.0)[:, None]
    feats = _lq_features(x_data)
    theta0, *_ = np.linalg.lstsq(feats, np.arctanh(np.clip(a_data, -0.95, 0.95)), rcond=None)

    fine = sysm.discretise(max(resolutions))
    thetas = [theta0]
    pairs: list[tuple[int, int, int, int]] = []  # (old index, new index, family, step)
    for _ in range(3):
        thetas.append(theta0 + rng.choice([0.01, 0.03, 0.1, 0.3]) * rng.normal(size=(2, 1)))
        pairs.append((0, len(thetas) - 1, FAMILIES["lq_random"], 0))
    # exact deterministic policy gradient step on the fine grid, random length
    ev0 = tm.evaluate_policies(fine, _lq_policy(theta0, fine.centres))
    u0 = _lq_policy(theta0, fine.centres)[:, 0]
    _, dq0 = _lq_q_and_grad(fine, ev0.V[0], fine.centres, u0)
    g = (_lq_features(fine.centres).T @ (ev0.d[0] * dq0 * (1.0 - u0**2)))[:, None]
    thetas.append(theta0 + rng.choice([0.01, 0.03, 0.1, 0.3]) * g / max(np.linalg.norm(g), 1e-12))
    pairs.append((0, len(thetas) - 1, FAMILIES["lq_policy_gradient"], 0))
    # TD3+BC trajectory with the exact critic of the fine grid
    alpha = float(rng.choice(ALPHAS))
    lr = float(rng.choice(LEARNING_RATES))
    theta, prev = theta0.copy(), 0
    for t in range(TRAIN_STEPS):
        V = tm.evaluate_policies(fine, _lq_policy(theta, fine.centres)).V[0]
        theta = tm.td3bc_actor_step(
            theta, feats, a_data, lambda acts, V=V: tuple(v[:, None] for v in _lq_q_and_grad(fine, V, x_data, acts[:, 0])), alpha, lr
        )
        thetas.append(theta.copy())
        pairs.append((prev, len(thetas) - 1, FAMILIES["lq_train_td3bc"], t + 1))
        prev = len(thetas) - 1
    thetas = np.stack(thetas)

    ref = sysm.discretise(reference)
    J_ref = np.array([tm.evaluate_policies(ref, _lq_policy(th, ref.centres)).J[0] for th in thetas])
    u_grid = np.linspace(-sysm.u_max, sysm.u_max, action_points)[:, None]
    rows = []
    for r_i, n_cells in enumerate(sorted(resolutions)):
        mdp = sysm.discretise(n_cells)
        pols = np.stack([_lq_policy(th, mdp.centres) for th in thetas])
        evs = tm.evaluate_policies(mdp, pols)
        L_P, L_Q = tm.lipschitz_constants(mdp, u_grid, tm.policy_actions_per_state(pols), evs.V)
        # covering radius of the data over the cell centres (assumption C with eta)
        eps_d = np.abs(mdp.centres[:, None] - np.sort(x_data)[None]).min(axis=1).max()
        for old, new, fam, step in pairs:
            ev_old = tm.PolicyEvaluation(V=evs.V[old : old + 1], d=evs.d[old : old + 1], J=evs.J[old : old + 1], P=evs.P[old : old + 1], r=evs.r[old : old + 1])
            out = tm.compare_policies(mdp, pols[old], pols[new][None], u_grid, ev_old=ev_old, L_P=L_P, L_Q=L_Q[old])
            keep = {k: v for k, v in out.items() if k not in ("V_new", "d_new", "adv")}
            b, db, dd = tm.bc_quantities(_lq_policy(thetas[old], x_data), _lq_policy(thetas[new], x_data), a_data)
            cell_of_data = np.abs(mdp.centres[:, None] - x_data[None]).argmin(0)
            mu = np.bincount(cell_of_data, minlength=mdp.n_states) / n_data
            keep.update(
                B=np.array([b]),
                dB=np.array([db]),
                delta_data=np.array([dd]),
                covered=np.array([True]),
                eta=np.array([(abs(thetas[old][1, 0]) + abs(thetas[new][1, 0])) * eps_d]),
                dQ_data=np.array([out["adv"][0, cell_of_data].mean()]),
                mismatch=np.array([np.abs(evs.d[old] - mu).sum()]),
                L_Q_new=np.array([L_Q[new]]),
                family=np.array([fam]),
                step=np.array([step]),
                improvement_ref=np.array([J_ref[new] - J_ref[old]]),
                J_ref_old=np.array([J_ref[old]]),
                J_ref_new=np.array([J_ref[new]]),
                lp_analytic=np.array([sysm.transition_lipschitz_bound]),
                source=np.array([SOURCES["lq_coarse" if r_i == 0 else "lq_fine"]]),
            )
            rows.append(keep)
    res = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    n = len(res["improvement"])
    res.update(
        instance=np.full(n, instance),
        n_states=np.array([int(x) for x in np.repeat(sorted(resolutions), len(pairs))]),
        action_dim=np.ones(n, int),
        grid_points=np.full(n, action_points),
        alpha=np.where(res["family"] == FAMILIES["lq_train_td3bc"], alpha, np.nan),
    )
    return res


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = set().union(*parts)
    out = {}
    for key in keys:
        cols = []
        for p in parts:
            n = len(p["improvement"])
            cols.append(p[key] if key in p else np.full(n, np.nan))
        out[key] = np.concatenate(cols)
    return out


def add_bounds(rec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Phi(B, dB) and the lower bounds (1-gamma)-scaled: lb_F = dQ - Phi_F for every form F."""
    g = rec["gamma"]
    rec["phi_bc"] = tm.phi_bc(g, rec["L_P"], rec["L_Q"], rec["B"], rec["dB"], rec["eta"])
    rec["tol"] = TOL_REL * (1.0 + np.abs(rec["J_old"]) + np.abs(rec["J_new"]))
    return rec


PHI_FORMS = ("phi_pair", "phi_mix", "phi_delta", "phi_bc")


def evaluate_checks(rec: dict[str, np.ndarray]) -> dict[str, Any]:
    """Violation counts of every stated inequality, negative controls, tightness, slacks."""
    g = rec["gamma"]
    c = 1.0 / (1.0 - g)
    tol = rec["tol"]
    imp = rec["improvement"]
    dQ = rec["dQ"]
    cov = rec["covered"].astype(bool)
    sqB = np.sqrt(rec["B"])
    root = sqB + np.sqrt(rec["B"] + rec["dB"])
    checks: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (applies mask, violated mask)
    every = np.ones(len(imp), bool)

    checks["pdl_identity"] = (every, rec["pdl_error"] > PDL_LIMIT)
    checks["occupancy_shift_identity"] = (every, rec["shift_identity_error"] > PDL_LIMIT)
    checks["occupancy_shift_d_old"] = (every, rec["shift"] > rec["shift_bound_old"] + tol)
    checks["occupancy_shift_d_new"] = (every, rec["shift"] > rec["shift_bound_new"] + tol)
    lip_shift = g * c * rec["L_P"] * rec["delta_mean"]
    checks["occupancy_shift_lipschitz"] = (every, rec["shift_bound_old"] > lip_shift * (1 + 1e-12) + tol)
    # the constants dominate the pairs the proof uses (in value units: a ratio over a step of
    # 1e-16 would only measure the round-off of Q - V)
    checks["transition_lipschitz_pairs"] = (every, rec["dP_excess"] > 1e-12)
    checks["critic_lipschitz_pairs"] = (every, rec["adv_excess"] > tol)
    for form in PHI_FORMS:
        applies = cov if form == "phi_bc" else every
        lb = c * (dQ - rec[form])
        checks[f"bound_{form}"] = (applies, imp < lb - tol)
        checks[f"thm44_{form}"] = (applies & (dQ >= rec[form]), imp < -tol)
    checks["phi_order_pair_mix_delta"] = (
        every,
        (rec["phi_pair"] > rec["phi_mix"] * (1 + 1e-12) + tol) | (rec["phi_mix"] > rec["phi_delta"] * (1 + 1e-12) + tol),
    )
    checks["phi_order_delta_bc"] = (cov, rec["phi_delta"] > rec["phi_bc"] * (1 + 1e-12) + tol)
    # mutual bounds between dQ and dB (under coverage)
    checks["delta_from_bc"] = (cov, rec["delta"] > root + rec["eta"] + 1e-12)
    checks["dq_upper_from_bc"] = (cov, np.abs(dQ) > rec["L_Q"] * (root + rec["eta"]) + tol)
    x = np.abs(dQ) / np.where(rec["L_Q"] > 0, rec["L_Q"], np.inf) - rec["eta"]
    x = np.maximum(x, 0.0)
    checks["db_lower_from_dq"] = (cov, rec["dB"] < np.maximum(0.0, x * (x - 2 * sqB)) - 1e-12 * (1 + x**2))
    # (a + b)^2 <= 2 (a^2 + b^2) and (a + b + c)^2 <= 3 (a^2 + b^2 + c^2)
    affine = np.where(
        rec["eta"] > 0, 3 * (2 * rec["B"] + rec["dB"] + rec["eta"] ** 2), 2 * (2 * rec["B"] + rec["dB"])
    )
    checks["dq_squared_upper_affine_in_db"] = (cov, dQ**2 > rec["L_Q"] ** 2 * affine * (1 + 1e-12) + tol)
    checks["db_upper_from_delta"] = (
        every,
        rec["dB"] > rec["delta_data"] ** 2 + 2 * rec["delta_data"] * sqB + 1e-12,
    )
    # corollary: the data-weighted dQ (what an algorithm can estimate on a batch)
    has_dqd = np.isfinite(rec["dQ_data"])
    lb_data = c * (rec["dQ_data"] - rec["phi_delta"] - rec["mismatch"] * rec["L_Q"] * rec["delta"])
    checks["bound_data_weighted"] = (has_dqd, imp < lb_data - tol)
    # LQ: the grid constant never exceeds the analytic constant of the continuous kernel
    is_lq = (rec["source"] == SOURCES["lq_coarse"]) | (rec["source"] == SOURCES["lq_fine"])
    checks["lq_transition_lipschitz_analytic"] = (is_lq, rec["L_P"] > rec["lp_analytic"] * (1 + 1e-9))

    violations = {name: int(np.sum(a & v)) for name, (a, v) in checks.items()}
    checked = {name: int(np.sum(a)) for name, (a, _) in checks.items()}
    by_source = {
        src: {name: int(np.sum(a & v & (rec["source"] == code))) for name, (a, v) in checks.items()}
        for src, code in SOURCES.items()
    }

    # negative controls: drop Phi, or shrink it 10x (overall and per source)
    neg_masks = {"phi_zero": imp < c * dQ - tol}
    for form in PHI_FORMS:
        applies = cov if form == "phi_bc" else every
        neg_masks[f"{form}_div10"] = applies & (imp < c * (dQ - rec[form] / 10.0) - tol)
    neg = {name: int(m.sum()) for name, m in neg_masks.items()}
    neg_by_source = {
        src: {name: int(np.sum(m & (rec["source"] == code))) for name, m in neg_masks.items()} for src, code in SOURCES.items()
    }
    # the wrong critic: L_Q of Q^{pi'} instead of Q^{pi}
    wrong = c * (dQ - g * c * rec["L_P"] * rec["L_Q_new"] * rec["delta"] ** 2)
    informative = {
        "wrong_critic_LQ_new_violations": int(np.sum(imp < wrong - tol)),
        "wrong_critic_LQ_new_smaller": int(np.sum(rec["L_Q_new"] < rec["L_Q"])),
        "dQ_positive_but_return_decreased": int(np.sum((dQ > 0) & (imp < -tol))),
        "coverage_failed_pairs": int(np.sum(~cov)),
        "coverage_failed_phi_bc_inequality_fails": int(np.sum(~cov & (imp < c * (dQ - rec["phi_bc"]) - tol))),
    }

    tight, usage, slack = {}, {}, {}
    for form in PHI_FORMS:
        applies = cov if form == "phi_bc" else every
        lb = c * (dQ - rec[form])
        pos = applies & (lb > 0)
        ratio = imp[pos] / lb[pos]
        tight[form] = {
            "pairs_with_positive_bound": int(pos.sum()),
            "median": float(np.median(ratio)) if pos.any() else None,
            "q10": float(np.quantile(ratio, 0.1)) if pos.any() else None,
            "min": float(ratio.min()) if pos.any() else None,
        }
        has = applies & (rec[form] > 0)
        u = (dQ[has] - imp[has] / c[has]) / rec[form][has]
        usage[form] = {
            "max": float(u.max()) if has.any() else None,
            "q99": float(np.quantile(u, 0.99)) if has.any() else None,
            "median": float(np.median(u)) if has.any() else None,
            "above_0.1": int(np.sum(u > 0.1)),
        }
        s = (imp - lb)[applies] / c[applies]  # (1-gamma)-scaled slack, >= 0 when the bound holds
        slack[form] = {"min": float(s.min()), "median": float(np.median(s))}
    by_gamma = {}
    for gv in sorted(set(float(x) for x in g)):
        m = g == gv
        lb = c * (dQ - rec["phi_delta"])
        pos = m & (lb > 0)
        by_gamma[str(gv)] = {
            "pairs": int(m.sum()),
            "bound_phi_delta_violations": int(np.sum(m & checks["bound_phi_delta"][1])),
            "thm44_phi_delta_applicable": int(np.sum(m & (dQ >= rec["phi_delta"]))),
            "median_tightness_phi_delta": float(np.median(imp[pos] / lb[pos])) if pos.any() else None,
        }
    by_family = {}
    for name, code in FAMILIES.items():
        m = rec["family"] == code
        if not m.any():
            continue
        lb = c * (dQ - rec["phi_delta"])
        pos = m & (lb > 0)
        by_family[name] = {
            "pairs": int(m.sum()),
            "return_increased": int(np.sum(m & (imp > tol))),
            "return_decreased": int(np.sum(m & (imp < -tol))),
            "dQ_positive_but_return_decreased": int(np.sum(m & (dQ > 0) & (imp < -tol))),
            "thm44_phi_delta_applicable": int(np.sum(m & (dQ >= rec["phi_delta"]))),
            "thm44_phi_bc_applicable": int(np.sum(m & cov & (dQ >= rec["phi_bc"]))),
            "covered": int(np.sum(m & cov)),
            "bound_violations": int(sum(np.sum(m & checks[f"bound_{f}"][0] & checks[f"bound_{f}"][1]) for f in PHI_FORMS)),
            "median_delta": float(np.median(rec["delta"][m])),
            "median_tightness_phi_delta": float(np.median(imp[pos] / lb[pos])) if pos.any() else None,
        }
    return {
        "by_family": by_family,
        "by_gamma": by_gamma,
        "violations": violations,
        "checked": checked,
        "violations_by_source": by_source,
        "negative_control_violations": neg,
        "negative_control_by_source": neg_by_source,
        "informative": informative,
        "tightness": tight,
        "penalty_usage": usage,
        "slack_scaled": slack,
    }


def lq_discretisation(rec: dict[str, np.ndarray]) -> dict[str, Any]:
    """Discretisation error of J and of J' - J at the two resolutions against the reference."""
    out: dict[str, Any] = {"reference_cells": LQ_REFERENCE}
    g = rec["gamma"]
    c = 1.0 / (1.0 - g)
    for name in ("lq_coarse", "lq_fine"):
        m = rec["source"] == SOURCES[name]
        if not m.any():
            continue
        err_j = np.abs(np.concatenate([rec["J_old"][m] - rec["J_ref_old"][m], rec["J_new"][m] - rec["J_ref_new"][m]]))
        scale = np.abs(np.concatenate([rec["J_ref_old"][m], rec["J_ref_new"][m]]))
        err_imp = np.abs(rec["improvement"][m] - rec["improvement_ref"][m])
        lb = c[m] * (rec["dQ"][m] - rec["phi_delta"][m])
        transfer = rec["improvement_ref"][m] - lb
        out[name] = {
            "cells": int(rec["n_states"][m][0]),
            "max_abs_error_J": float(err_j.max()),
            "max_rel_error_J": float((err_j / np.maximum(scale, 1e-12)).max()),
            "median_abs_error_J": float(np.median(err_j)),
            "max_abs_error_improvement": float(err_imp.max()),
            "bound_phi_delta_on_reference_violations": int(np.sum(transfer < -rec["tol"][m])),
            "min_slack_on_reference": float(transfer.min()),
        }
    if "lq_coarse" in out and "lq_fine" in out:
        e1, e2 = out["lq_coarse"]["median_abs_error_J"], out["lq_fine"]["median_abs_error_J"]
        out["observed_order_median"] = float(np.log2(e1 / e2)) if e1 > 0 and e2 > 0 else None
    return out


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def run(
    instances: int,
    seed: int = 0,
    lq_instances: int | None = None,
    tight_instances: int | None = None,
    lq_resolutions: tuple[int, ...] = LQ_RESOLUTIONS,
    lq_reference: int = LQ_REFERENCE,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run every check; returns (JSON-able summary, per-pair records)."""
    if instances < 1:
        raise ValueError(f"--instances must be >= 1, got {instances}")
    n_lq = max(2, instances // 100) if lq_instances is None else lq_instances
    n_tight = max(10, instances // 100) if tight_instances is None else tight_instances
    t0 = time.time()
    parts = []
    for i in range(instances):
        parts.append(tabular_instance(np.random.default_rng([seed, 0, i]), i))
        if progress and (i + 1) % 500 == 0:
            print(f"tabular {i + 1}/{instances}  {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    for i in range(n_lq):
        parts.append(lq_instance(np.random.default_rng([seed, 1, i]), i, lq_resolutions, lq_reference))
        if progress and (i + 1) % 10 == 0:
            print(f"lq {i + 1}/{n_lq}  {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    for i in range(n_tight):
        parts.append(tight_instance(np.random.default_rng([seed, 2, i]), i))
    rec = add_bounds(_concat(parts))
    res = evaluate_checks(rec)
    tab = rec["source"] == SOURCES["tabular"]
    pairs_by_family = {name: int(np.sum(rec["family"] == code)) for name, code in FAMILIES.items()}
    summary: dict[str, Any] = {
        "instances": instances + n_lq + n_tight,
        "tabular_instances": instances,
        "lq_instances": n_lq,
        "tight_instances": n_tight,
        "pairs": int(len(rec["improvement"])),
        "pairs_by_family": pairs_by_family,
        "seed": seed,
        "gammas": sorted(set(float(x) for x in rec["gamma"])),
        "tabular_states": sorted(set(int(x) for x in rec["n_states"][tab])),
        "tabular_action_dims": sorted(set(int(x) for x in rec["action_dim"][tab])),
        "lq_resolutions": list(lq_resolutions),
        "tolerance": f"{TOL_REL:g} * (1 + |J| + |J'|)",
        "violations": res["violations"],
        "total_violations": int(sum(res["violations"].values())),
        "checked": res["checked"],
        "violations_by_source": res["violations_by_source"],
        "pdl_max_error": float(rec["pdl_error"].max()),
        "pdl_max_relative_error": float((rec["pdl_error"] / (1 + np.abs(rec["J_old"]))).max()),
        "occupancy_identity_max_error": float(rec["shift_identity_error"].max()),
        "negative_control_violations": res["negative_control_violations"],
        "negative_control_by_source": res["negative_control_by_source"],
        "median_tightness": res["tightness"]["phi_delta"]["median"],
        "tightness": res["tightness"],
        "worst_slack": res["slack_scaled"],
        "penalty_usage": res["penalty_usage"],
        "informative": res["informative"],
        "by_gamma": res["by_gamma"],
        "by_family": res["by_family"],
        "lq_discretisation": lq_discretisation(rec),
        "runtime_s": round(time.time() - t0, 1),
    }
    return summary, rec


def make_plots(rec: dict[str, np.ndarray], summary: dict[str, Any], out_dir: str) -> list[str]:
    """Bound vs true improvement (with y = x) and slack / penalty-usage histograms, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    g = rec["gamma"]
    c = 1.0 / (1.0 - g)
    cov = rec["covered"].astype(bool)
    fam = rec["family"]
    groups = {
        "tabular, grid steps": (rec["source"] == SOURCES["tabular"]) & (fam < FAMILIES["train_td3bc"]),
        "tabular, TD3+BC steps": fam == FAMILIES["train_td3bc"],
        "LQ (both grids)": (rec["source"] == SOURCES["lq_coarse"]) | (rec["source"] == SOURCES["lq_fine"]),
        "two-state sharpness family": rec["source"] == SOURCES["tight"],
    }
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    rng = np.random.default_rng(0)
    labels = {"phi_delta": r"$\Phi_\delta$", "phi_bc": r"$\Phi(B,\Delta B)$", "phi_pair": r"$\Phi_{pair}$"}
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    for ax, form in zip(axes, ("phi_delta", "phi_bc", "phi_pair")):
        applies = cov if form == "phi_bc" else np.ones(len(g), bool)
        x = rec["dQ"] - rec[form]  # (1 - gamma) * bound
        y = rec["improvement"] / c  # (1 - gamma) * (J' - J)
        for (name, m), col in zip(groups.items(), colours):
            idx = np.flatnonzero(m & applies)
            if len(idx) > 6000:
                idx = rng.choice(idx, 6000, replace=False)
            ax.scatter(x[idx], y[idx], s=3, alpha=0.4, color=col, label=f"{name} ({int(np.sum(m & applies))})", rasterized=True)
        lim = np.nanmax(np.abs(np.concatenate([x[applies], y[applies]])))
        ax.plot([-lim, lim], [-lim, lim], "k-", lw=1, label="y = x")
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_yscale("symlog", linthresh=1e-4)
        ticks = [t for t in (-1e4, -1e2, -1.0, -1e-2, -1e-4, 0.0, 1e-4, 1e-2, 1.0, 1e2, 1e4) if abs(t) <= 1.5 * lim]
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlim(-1.5 * lim, 1.5 * lim)
        ax.set_ylim(-1.5 * lim, 1.5 * lim)
        nv = summary["violations"][f"bound_{form}"]
        ax.set_title(f"{labels[form]}: {nv} violations / {int(applies.sum())} steps")
        ax.set_xlabel(r"bound $(1-\gamma)^{-1}(\Delta Q-\Phi)$, times $(1-\gamma)$")
        ax.set_ylabel(r"true $J(\pi')-J(\pi)$, times $(1-\gamma)$")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Improvement bound on {summary['instances']} instances: every point must lie above y = x")
    fig.tight_layout()
    p = os.path.join(out_dir, "bound_vs_improvement.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for form, col in zip(("phi_delta", "phi_pair", "phi_bc"), ("tab:blue", "tab:red", "tab:purple")):
        applies = cov if form == "phi_bc" else np.ones(len(g), bool)
        s = (rec["improvement"] / c - (rec["dQ"] - rec[form]))[applies]
        axes[0].hist(np.log10(np.maximum(s, 1e-16)), bins=80, histtype="step", color=col, label=labels[form])
        has = applies & (rec[form] > 0)
        u = (rec["dQ"][has] - rec["improvement"][has] / c[has]) / rec[form][has]
        axes[1].hist(np.clip(u, -1.5, 1.5), bins=120, histtype="step", color=col, label=labels[form])
    total = summary["total_violations"]
    axes[0].set_title(f"slack of the bound, scaled by $(1-\\gamma)$ ({total} violations of all checks)")
    axes[0].set_xlabel(r"$\log_{10}$ [$(1-\gamma)(J'-J) - (\Delta Q - \Phi)$]")
    axes[0].set_ylabel("steps")
    axes[0].legend()
    axes[1].axvline(1.0, color="k", lw=1)
    axes[1].axvline(0.1, color="gray", ls="--", lw=1)
    axes[1].set_yscale("log")
    axes[1].set_title(r"share of $\Phi$ used: $(\Delta Q-(1-\gamma)(J'-J))/\Phi$ (violation if $>1$; dashed: $\Phi/10$)")
    axes[1].set_xlabel("penalty usage (clipped to [-1.5, 1.5])")
    axes[1].legend()
    fig.tight_layout()
    p = os.path.join(out_dir, "slack_histogram.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, required=True, help="number of random tabular instances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lq", type=int, default=None, help="number of LQ instances (default instances // 100, at least 2)")
    ap.add_argument("--tight", type=int, default=None, help="number of two-state sharpness instances (default instances // 100, at least 10)")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--plots", default=None, help="write the PNG plots into this folder")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    summary, rec = run(args.instances, args.seed, args.lq, args.tight, progress=args.progress)
    if args.plots:
        summary["plots"] = make_plots(rec, summary, args.plots)
    text = json.dumps(summary, indent=2)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    ok = (
        summary["total_violations"] == 0
        and summary["pdl_max_error"] < PDL_LIMIT
        and summary["negative_control_violations"]["phi_zero"] > 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
