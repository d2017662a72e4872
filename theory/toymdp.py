"""Toy MDPs with exact (float64) evaluation, for the policy-improvement bound.

The statements, constants and proofs are in ``theory/README.md``; this module holds the
pieces that compute every quantity in them exactly, so that ``theory/check_bound.py`` and
the tests can check the bound.

Two families, both "tabular MDP whose actions are points of R^k":

* :class:`SmoothTabularMDP`: finitely many states, actions in the box [-1, 1]^k,
  ``P(.|s, a) = softmax(G[s] + H[s] a)`` and a smooth random reward (sum of Gaussian bumps).
  P and r are defined for every action in the box, so a continuous actor can be trained
  on it; the finite action grid is what random policies choose from.
* :class:`DiscretisedLQ`: a bounded 1-D linear-quadratic system with Gaussian noise,
  ``x' = clip(a x + b u + sigma eps, -x_max, x_max)``, ``r = -(q x^2 + rho u^2)``, on a grid
  of cells (cell masses of the Gaussian; the clipped tails go to the end cells).

:class:`TableMDP` holds the small hand-made examples (:func:`two_state_example`, and
:func:`tight_two_state`, on which the penalty of the bound is nearly attained).

Conventions: a deterministic policy is an array ``(n_states, k)`` of actions; occupancies
are normalised, ``d = (1 - gamma) rho0^T (I - gamma P_pi)^-1``; ``J = rho0 . V``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

Array = NDArray[np.float64]

__all__ = [
    "ActionMDP",
    "SmoothTabularMDP",
    "TableMDP",
    "ClippedLQ",
    "DiscretisedLQ",
    "PolicyEvaluation",
    "action_grid",
    "random_tabular_mdp",
    "two_state_example",
    "tight_two_state",
    "evaluate_policies",
    "q_values",
    "q_action_grad",
    "lipschitz_constant",
    "lipschitz_constants",
    "transition_lipschitz",
    "policy_actions_per_state",
    "critic_lipschitz",
    "bc_quantities",
    "phi_delta",
    "phi_bc",
    "compare_policies",
    "tanh_linear_policy",
    "td3bc_actor_step",
]


class ActionMDP(Protocol):
    """A finite-state MDP whose actions are points of R^k (the interface the checks use)."""

    n_states: int
    action_dim: int
    gamma: float
    rho0: Array

    def transition(self, states: NDArray[np.int64], actions: Array) -> Array:
        """P(.|s_i, a_i) for each row: shape (M, n_states)."""

    def reward(self, states: NDArray[np.int64], actions: Array) -> Array:
        """r(s_i, a_i): shape (M,)."""

    def transition_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        """dP(s'|s_i, a)/da at a_i: shape (M, n_states, k)."""

    def reward_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        """dr(s_i, a)/da at a_i: shape (M, k)."""


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
    return gamma


def _check_distribution(p: Array, name: str) -> Array:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"{name} must be a probability vector, got shape {p.shape} and sum {p.sum():.6g}")
    return p


def action_grid(points: int, dim: int, low: float = -1.0, high: float = 1.0) -> Array:
    """The regular grid of ``points**dim`` actions in [low, high]^dim, shape (points**dim, dim)."""
    if points < 2 or dim < 1:
        raise ValueError(f"action_grid needs points >= 2 and dim >= 1, got points={points}, dim={dim}")
    axis = np.linspace(low, high, points)
    mesh = np.meshgrid(*([axis] * dim), indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


# --------------------------------------------------------------------------------------
# Smooth tabular MDP
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothTabularMDP:
    """Finite states; actions in [-1, 1]^k; softmax transitions with action-linear logits.

    ``P(s'|s, a) = softmax_{s'}(logits[s, s'] + sens[s, s'] . a)``;
    ``r(s, a) = r_bias[s] + sum_j r_weights[s, j] exp(-||a - r_centres[s, j]||^2 / (2 r_width^2))``.
    ``grid`` is the finite action set random policies choose from.
    """

    logits: Array  # (S, S)
    sens: Array  # (S, S, k)
    r_bias: Array  # (S,)
    r_weights: Array  # (S, J)
    r_centres: Array  # (S, J, k)
    r_width: float
    gamma: float
    rho0: Array  # (S,)
    grid: Array  # (nA, k)

    def __post_init__(self) -> None:
        s = self.logits.shape[0]
        if self.logits.shape != (s, s) or self.sens.shape[:2] != (s, s):
            raise ValueError(f"logits must be (S, S) and sens (S, S, k); got {self.logits.shape}, {self.sens.shape}")
        if self.grid.ndim != 2 or self.grid.shape[1] != self.sens.shape[2]:
            raise ValueError(f"grid must be (nA, k={self.sens.shape[2]}), got {self.grid.shape}")
        _check_gamma(self.gamma)
        _check_distribution(self.rho0, "rho0")

    @property
    def n_states(self) -> int:
        return self.logits.shape[0]

    @property
    def action_dim(self) -> int:
        return self.sens.shape[2]

    def transition(self, states: NDArray[np.int64], actions: Array) -> Array:
        z = self.logits[states] + np.einsum("mtk,mk->mt", self.sens[states], actions)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def transition_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        p = self.transition(states, actions)  # (M, S)
        h = self.sens[states]  # (M, S, k)
        mean_h = np.einsum("mt,mtk->mk", p, h)
        return p[:, :, None] * (h - mean_h[:, None, :])

    def _bumps(self, states: NDArray[np.int64], actions: Array) -> tuple[Array, Array]:
        diff = actions[:, None, :] - self.r_centres[states]  # (M, J, k)
        bump = self.r_weights[states] * np.exp(-0.5 * np.sum(diff**2, axis=2) / self.r_width**2)
        return bump, diff

    def reward(self, states: NDArray[np.int64], actions: Array) -> Array:
        bump, _ = self._bumps(states, actions)
        return self.r_bias[states] + bump.sum(axis=1)

    def reward_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        bump, diff = self._bumps(states, actions)
        return -np.einsum("mj,mjk->mk", bump, diff) / self.r_width**2


def random_tabular_mdp(
    rng: np.random.Generator,
    n_states: int,
    action_dim: int,
    grid_points: int,
    gamma: float,
    sensitivity: float = 1.0,
    n_bumps: int = 3,
    r_width: float = 0.5,
) -> SmoothTabularMDP:
    """A random :class:`SmoothTabularMDP`; ``sensitivity`` scales how fast P moves with a (about L_P)."""
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    s, k = n_states, action_dim
    rho0 = rng.dirichlet(np.ones(s))
    return SmoothTabularMDP(
        logits=rng.normal(size=(s, s)),
        sens=sensitivity * rng.normal(size=(s, s, k)),
        r_bias=0.5 * rng.normal(size=s),
        r_weights=rng.normal(size=(s, n_bumps)),
        r_centres=rng.uniform(-1.0, 1.0, size=(s, n_bumps, k)),
        r_width=float(r_width),
        gamma=_check_gamma(gamma),
        rho0=rho0,
        grid=action_grid(grid_points, k),
    )


@dataclass(frozen=True)
class TableMDP:
    """An MDP given by tables over a finite action list (used for the hand-computed example)."""

    P: Array  # (S, nA, S)
    R: Array  # (S, nA)
    gamma: float
    rho0: Array
    grid: Array  # (nA, k)

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def action_dim(self) -> int:
        return self.grid.shape[1]

    def _index(self, actions: Array) -> NDArray[np.int64]:
        d = np.abs(actions[:, None, :] - self.grid[None]).sum(axis=2)
        idx = d.argmin(axis=1)
        if np.any(d[np.arange(len(idx)), idx] > 1e-12):
            raise ValueError("this table MDP only accepts actions from its grid")
        return idx

    def transition(self, states: NDArray[np.int64], actions: Array) -> Array:
        return self.P[states, self._index(actions)]

    def reward(self, states: NDArray[np.int64], actions: Array) -> Array:
        return self.R[states, self._index(actions)]

    def transition_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        raise NotImplementedError("a table MDP has no action gradient")

    def reward_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        raise NotImplementedError("a table MDP has no action gradient")


def two_state_example() -> tuple[TableMDP, Array, Array, NDArray[np.int64], Array]:
    """The hand-computed example of theory/README.md: (mdp, pi, pi_new, data_states, data_actions).

    Two states, actions {0, 1} in R, gamma = 1/2, start in state 0. Action 0 keeps state 0
    where it is and sends state 1 to a coin flip; action 1 sends state 0 to a coin flip and
    keeps state 1. r(0, 1) = 1, r(1, 1) = 2, all other rewards 0. pi = (0, 0), pi' = (1, 1),
    data {(0, 0), (1, 1)}.
    """
    P = np.zeros((2, 2, 2))
    P[0, 0] = [1.0, 0.0]
    P[0, 1] = [0.5, 0.5]
    P[1, 0] = [0.5, 0.5]
    P[1, 1] = [0.0, 1.0]
    R = np.array([[0.0, 1.0], [0.0, 2.0]])
    mdp = TableMDP(P=P, R=R, gamma=0.5, rho0=np.array([1.0, 0.0]), grid=np.array([[0.0], [1.0]]))
    pi = np.array([[0.0], [0.0]])
    pi_new = np.array([[1.0], [1.0]])
    return mdp, pi, pi_new, np.array([0, 1]), np.array([[0.0], [1.0]])


def tight_two_state(gamma: float, c: float, L: float, delta: float) -> tuple[TableMDP, Array, Array, NDArray[np.int64], Array]:
    """A two-state instance on which Phi_delta is nearly attained (theory/README.md, sharpness).

    Actions {0, delta} in R. State 0: P(1|0, a) = c a, else stay; r(0, a) = L a. State 1 is
    absorbing with r(1, a) = -L a. pi = (0, 0), pi' = (delta, delta), start in state 0, data
    {(0, 0), (1, 0)}. Then L_P = 2c, L_Q = L, dQ = L delta, and the share of Phi_delta used
    by the step is (1 - gamma) / (1 - gamma + gamma c delta) -> 1 as delta -> 0.
    Returns (mdp, pi, pi_new, data_states, data_actions).
    """
    if not (0 < c * delta <= 1 and L > 0 and delta > 0):
        raise ValueError(f"tight_two_state needs L > 0, delta > 0 and 0 < c delta <= 1; got c={c}, L={L}, delta={delta}")
    P = np.zeros((2, 2, 2))
    P[0, 0] = [1.0, 0.0]
    P[0, 1] = [1.0 - c * delta, c * delta]
    P[1, :] = [0.0, 1.0]
    R = np.array([[0.0, L * delta], [0.0, -L * delta]])
    mdp = TableMDP(P=P, R=R, gamma=_check_gamma(gamma), rho0=np.array([1.0, 0.0]), grid=np.array([[0.0], [delta]]))
    pi = np.zeros((2, 1))
    return mdp, pi, np.full((2, 1), float(delta)), np.array([0, 1]), np.zeros((2, 1))


# --------------------------------------------------------------------------------------
# Bounded linear-quadratic system
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClippedLQ:
    """``x' = clip(a x + b u + sigma eps, -x_max, x_max)``, ``r = -(q x^2 + rho u^2)``, u in [-u_max, u_max]."""

    a: float
    b: float
    sigma: float
    q: float
    rho: float
    gamma: float
    x_max: float = 1.0
    u_max: float = 1.0

    def __post_init__(self) -> None:
        if self.sigma <= 0 or self.x_max <= 0 or self.u_max <= 0:
            raise ValueError(f"sigma, x_max and u_max must be positive, got {self.sigma}, {self.x_max}, {self.u_max}")
        _check_gamma(self.gamma)

    @property
    def transition_lipschitz_bound(self) -> float:
        """L1-Lipschitz constant of the continuous kernel in u: |b| sqrt(2/pi) / sigma.

        ||N(m1, s^2) - N(m2, s^2)||_1 = 2 (2 Phi(|m1 - m2| / 2s) - 1) <= |m1 - m2| sqrt(2/pi) / s,
        and clipping / binning are Markov maps, which do not increase L1 distances.
        """
        return abs(self.b) * np.sqrt(2.0 / np.pi) / self.sigma

    def discretise(self, n_cells: int) -> "DiscretisedLQ":
        """The tabular MDP on ``n_cells`` equal cells of [-x_max, x_max] (uniform start distribution)."""
        if n_cells < 2:
            raise ValueError(f"n_cells must be >= 2, got {n_cells}")
        edges = np.linspace(-self.x_max, self.x_max, n_cells + 1)
        return DiscretisedLQ(system=self, edges=edges)


@dataclass(frozen=True)
class DiscretisedLQ:
    """:class:`ClippedLQ` on a grid of cells: state i stands for the cell centre; P = Gaussian cell masses."""

    system: ClippedLQ
    edges: Array
    centres: Array = field(init=False)
    rho0: Array = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "centres", 0.5 * (self.edges[1:] + self.edges[:-1]))
        n = len(self.edges) - 1
        object.__setattr__(self, "rho0", np.full(n, 1.0 / n))

    @property
    def n_states(self) -> int:
        return len(self.centres)

    @property
    def action_dim(self) -> int:
        return 1

    @property
    def gamma(self) -> float:
        return self.system.gamma

    def _z(self, x: Array, u: Array) -> Array:
        sy = self.system
        mu = sy.a * x + sy.b * u
        inner = self.edges[1:-1]
        return (inner[None, :] - mu[:, None]) / sy.sigma  # (M, n-1)

    def transition_at(self, x: Array, u: Array) -> Array:
        """Cell masses of the next state from continuous states x (M,) under actions u (M,)."""
        cdf = ndtr(self._z(np.asarray(x, float), np.asarray(u, float)))
        m = len(cdf)
        cdf = np.concatenate([np.zeros((m, 1)), cdf, np.ones((m, 1))], axis=1)
        return np.diff(cdf, axis=1)

    def transition_grad_at(self, x: Array, u: Array) -> Array:
        """d(cell masses)/du from continuous states x: shape (M, n)."""
        z = self._z(np.asarray(x, float), np.asarray(u, float))
        pdf = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
        m = len(pdf)
        pdf = np.concatenate([np.zeros((m, 1)), pdf, np.zeros((m, 1))], axis=1)
        # d/du Phi((e - a x - b u)/sigma) = -(b / sigma) phi(z)
        return -(self.system.b / self.system.sigma) * np.diff(pdf, axis=1)

    def reward_at(self, x: Array, u: Array) -> Array:
        return -(self.system.q * np.asarray(x) ** 2 + self.system.rho * np.asarray(u) ** 2)

    def transition(self, states: NDArray[np.int64], actions: Array) -> Array:
        return self.transition_at(self.centres[states], actions[:, 0])

    def transition_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        return self.transition_grad_at(self.centres[states], actions[:, 0])[:, :, None]

    def reward(self, states: NDArray[np.int64], actions: Array) -> Array:
        return self.reward_at(self.centres[states], actions[:, 0])

    def reward_action_grad(self, states: NDArray[np.int64], actions: Array) -> Array:
        return (-2.0 * self.system.rho * actions[:, 0])[:, None]


# --------------------------------------------------------------------------------------
# Exact evaluation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyEvaluation:
    """Exact evaluation of K deterministic policies: V (K, S), d (K, S), J (K,), P (K, S, S), r (K, S)."""

    V: Array
    d: Array
    J: Array
    P: Array
    r: Array


def _check_policies(mdp: ActionMDP, policies: Array) -> Array:
    policies = np.asarray(policies, dtype=np.float64)
    if policies.ndim == 2:
        policies = policies[None]
    if policies.ndim != 3 or policies.shape[1:] != (mdp.n_states, mdp.action_dim):
        raise ValueError(
            f"policies must have shape (K, n_states={mdp.n_states}, k={mdp.action_dim}), got {policies.shape}"
        )
    return policies


def evaluate_policies(mdp: ActionMDP, policies: Array) -> PolicyEvaluation:
    """V, d^pi, J for each deterministic policy by linear solves (float64).

    V = (I - gamma P_pi)^-1 r_pi and d^T = (1 - gamma) rho0^T (I - gamma P_pi)^-1.
    """
    pols = _check_policies(mdp, policies)
    k_pol, s = pols.shape[:2]
    states = np.tile(np.arange(s), k_pol)
    flat = pols.reshape(-1, mdp.action_dim)
    P = mdp.transition(states, flat).reshape(k_pol, s, s)
    r = mdp.reward(states, flat).reshape(k_pol, s)
    g = mdp.gamma
    M = np.eye(s)[None] - g * P
    V = np.linalg.solve(M, r[..., None])[..., 0]
    rhs = np.broadcast_to((1.0 - g) * mdp.rho0, (k_pol, s))[..., None]
    d = np.linalg.solve(np.swapaxes(M, 1, 2), rhs)[..., 0]
    J = V @ mdp.rho0
    return PolicyEvaluation(V=V, d=d, J=J, P=P, r=r)


def q_values(mdp: ActionMDP, V: Array, states: NDArray[np.int64], actions: Array) -> Array:
    """Q(s_i, a_i) = r(s_i, a_i) + gamma P(.|s_i, a_i) . V for the policy whose value is V."""
    return mdp.reward(states, actions) + mdp.gamma * mdp.transition(states, actions) @ V


def q_action_grad(mdp: ActionMDP, V: Array, states: NDArray[np.int64], actions: Array) -> Array:
    """dQ(s_i, a)/da at a_i (shape (M, k)), exact for the policy whose value is V."""
    dp = mdp.transition_action_grad(states, actions)
    return mdp.reward_action_grad(states, actions) + mdp.gamma * np.einsum("mtk,t->mk", dp, V)


# --------------------------------------------------------------------------------------
# Lipschitz constants over a finite action set
# --------------------------------------------------------------------------------------


def lipschitz_constant(values: Array, actions: Array) -> float:
    """max_s max_{a != a'} ||values[s, a] - values[s, a']|| / ||a - a'|| over finite action sets.

    ``values`` is (S, n) (absolute difference) or (S, n, m) (L1 norm over the last axis);
    ``actions`` is (n, k), shared by all states, or (S, n, k), one action list per state.
    Distances between actions are Euclidean; pairs at distance 0 (repeated actions) are
    skipped. For k = 1 the maximum over all pairs equals the maximum over neighbours in
    sorted order (triangle inequality: ratio(a, c) <= max(ratio(a, b), ratio(b, c)) for
    a < b < c), which is used to avoid the quadratic cost; it is exact, not an approximation.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[:, :, None]
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim == 2:
        actions = np.broadcast_to(actions, (values.shape[0],) + actions.shape)
    if actions.shape[:2] != values.shape[:2]:
        raise ValueError(f"values {values.shape} and actions {actions.shape} disagree on (states, actions)")
    if actions.shape[1] < 2:
        return 0.0
    if actions.shape[2] == 1:
        order = np.argsort(actions[:, :, 0], axis=1)
        a = np.take_along_axis(actions[:, :, 0], order, axis=1)
        v = np.take_along_axis(values, order[:, :, None], axis=1)
        gaps = np.diff(a, axis=1)
        num = np.abs(np.diff(v, axis=1)).sum(axis=2)
    else:
        dist = np.linalg.norm(actions[:, :, None, :] - actions[:, None, :, :], axis=3)
        num = np.abs(values[:, :, None, :] - values[:, None, :, :]).sum(axis=3)
        gaps = dist
    ratio = np.divide(num, gaps, out=np.zeros_like(num), where=gaps > 0)
    return float(ratio.max())


def lipschitz_constants(
    mdp: ActionMDP,
    grid: Array,
    extra: Array | None = None,
    values: Array | None = None,
    max_chunk: int = 4_000_000,
) -> tuple[float, Array]:
    """(L_P, L_Q per value vector): Lipschitz constants in the action, per state, sup over states.

    At state s the action set is A_s = grid + extra[s] (``grid`` (nA, k); ``extra`` (S, E, k),
    e.g. the actions the compared policies take at s). The proof only uses pairs of actions
    taken at the same state, so these per-state sets are all the bound needs.

    L_P = max_s max_{a != a' in A_s} ||P(.|s,a) - P(.|s,a')||_1 / ||a - a'||;
    L_Q[j] = max_s max_{a != a' in A_s} |Q_j(s,a) - Q_j(s,a')| / ||a - a'|| with
    Q_j = r + gamma P values[j], i.e. the critic constant of the policy whose value is values[j].
    """
    s = mdp.n_states
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != mdp.action_dim:
        raise ValueError(f"grid must be (nA, k={mdp.action_dim}), got {grid.shape}")
    acts = np.broadcast_to(grid, (s,) + grid.shape)
    if extra is not None:
        extra = np.asarray(extra, dtype=np.float64)
        if extra.ndim != 3 or extra.shape[0] != s or extra.shape[2] != mdp.action_dim:
            raise ValueError(f"extra must be (n_states={s}, E, k={mdp.action_dim}), got {extra.shape}")
        acts = np.concatenate([acts, extra], axis=1)
    n = acts.shape[1]
    vals = np.zeros((0, s)) if values is None else np.atleast_2d(np.asarray(values, dtype=np.float64))
    if vals.shape[1] != s:
        raise ValueError(f"values must be (J, n_states={s}), got {vals.shape}")
    cost = n * s * (n if mdp.action_dim > 1 else 1)
    per_chunk = max(1, max_chunk // max(1, cost))
    L_P = 0.0
    L_Q = np.zeros(vals.shape[0])
    for lo in range(0, s, per_chunk):
        idx = np.arange(lo, min(s, lo + per_chunk))
        a_chunk = acts[idx]
        flat_states = np.repeat(idx, n)
        flat_acts = a_chunk.reshape(-1, mdp.action_dim)
        P = mdp.transition(flat_states, flat_acts)  # (c*n, S)
        L_P = max(L_P, lipschitz_constant(P.reshape(len(idx), n, s), a_chunk))
        if len(vals):
            Q = mdp.reward(flat_states, flat_acts)[:, None] + mdp.gamma * P @ vals.T  # (c*n, J)
            Q = Q.reshape(len(idx), n, -1)
            for j in range(vals.shape[0]):
                L_Q[j] = max(L_Q[j], lipschitz_constant(Q[:, :, j], a_chunk))
    return L_P, L_Q


def transition_lipschitz(mdp: ActionMDP, grid: Array, extra: Array | None = None) -> float:
    """L_P alone (see :func:`lipschitz_constants`)."""
    return lipschitz_constants(mdp, grid, extra)[0]


def critic_lipschitz(mdp: ActionMDP, V: Array, grid: Array, extra: Array | None = None) -> float:
    """L_Q of the policy whose value vector is V (see :func:`lipschitz_constants`)."""
    return float(lipschitz_constants(mdp, grid, extra, np.asarray(V)[None])[1][0])


def policy_actions_per_state(*policies: Array) -> Array:
    """Stack policies (each (S, k) or (K, S, k)) into per-state extra actions (S, E, k)."""
    stacked = [np.asarray(p, dtype=np.float64).reshape(-1, *np.asarray(p).shape[-2:]) for p in policies]
    return np.swapaxes(np.concatenate(stacked, axis=0), 0, 1)


# --------------------------------------------------------------------------------------
# BC quantities and the penalties
# --------------------------------------------------------------------------------------


def bc_quantities(pi_at_data: Array, pi_new_at_data: Array, data_actions: Array) -> tuple[float, float, float]:
    """(B, dB, delta_D) for one step on a dataset of pairs (s_i, a_i).

    BC_pi(s_i, a_i) = ||pi(s_i) - a_i||^2 (sum over action dimensions), B = max_i BC_pi,
    dB = max_i |BC_pi' - BC_pi|, delta_D = max_i ||pi'(s_i) - pi(s_i)||.
    """
    bc_old = np.sum((pi_at_data - data_actions) ** 2, axis=-1)
    bc_new = np.sum((pi_new_at_data - data_actions) ** 2, axis=-1)
    delta_d = np.linalg.norm(pi_new_at_data - pi_at_data, axis=-1)
    return float(bc_old.max()), float(np.abs(bc_new - bc_old).max()), float(delta_d.max())


def phi_delta(gamma: float, L_P: float, L_Q: float, delta: Array | float) -> Array | float:
    """Phi = gamma L_P L_Q delta^2 / (1 - gamma)."""
    return gamma * L_P * L_Q * np.square(delta) / (1.0 - gamma)


def phi_bc(gamma: float, L_P: float, L_Q: float, B: Array | float, dB: Array | float, eta: Array | float = 0.0) -> Array | float:
    """Phi(B, dB) = gamma L_P L_Q (sqrt(B) + sqrt(B + dB) + eta)^2 / (1 - gamma).

    eta = 0 under full coverage; eta bounds how much pi' - pi can differ between a visited
    state and the data (see theory/README.md, assumption C).
    """
    root = np.sqrt(B) + np.sqrt(np.add(B, dB)) + eta
    return gamma * L_P * L_Q * root**2 / (1.0 - gamma)


def compare_policies(
    mdp: ActionMDP,
    pi: Array,
    pi_new: Array,
    grid: Array,
    ev_old: PolicyEvaluation | None = None,
    L_P: float | None = None,
    L_Q: float | None = None,
) -> dict[str, Array]:
    """Every exact quantity of the bound for the steps pi -> pi_new[j] (j = 0..K-1).

    L_P and L_Q (the latter for Q^pi, the critic of the OLD policy) are taken over the
    per-state action sets grid + {pi(s), pi_new[j](s)} unless given; a caller passing them
    must have computed them over sets that contain those actions. Returns arrays of shape
    (K,): J_old, J_new, improvement, pdl_error, shift (||d' - d||_1), shift_bound_old
    (gamma/(1-gamma) E_{d^pi} ||dP||_1), shift_bound_new (same with d^pi'),
    shift_identity_error, L_P, L_Q, delta (sup_s), delta_mean (E_{d^pi}), dQ,
    adv_max (max_s |A^pi(s, pi'(s))|), adv_excess / dP_excess (how far the pairs exceed the
    Lipschitz constants; <= 0 up to round-off), phi_pair, phi_mix, phi_delta, with scalars broadcast;
    and V_new (K, S), d_new (K, S), adv (K, S).
    """
    pi = _check_policies(mdp, pi)[0]
    new = _check_policies(mdp, pi_new)
    g = mdp.gamma
    s = mdp.n_states
    ev = ev_old if ev_old is not None else evaluate_policies(mdp, pi)
    V, d, J = ev.V[0], ev.d[0], float(ev.J[0])
    P_old = ev.P[0]
    en = evaluate_policies(mdp, new)
    k_pol = new.shape[0]
    states = np.tile(np.arange(s), k_pol)
    q_new = q_values(mdp, V, states, new.reshape(-1, mdp.action_dim)).reshape(k_pol, s)
    adv = q_new - V[None]  # A^pi(s, pi'(s)); Q^pi(s, pi(s)) = V^pi(s)
    improvement = en.J - J
    pdl = np.einsum("ks,ks->k", en.d, adv) / (1.0 - g)
    dP = np.abs(en.P - P_old[None]).sum(axis=2)  # (K, S)
    shift = np.abs(en.d - d[None]).sum(axis=1)
    # d' - d = gamma d^T (P' - P) (I - gamma P')^-1 (row vectors)
    M_new = np.eye(s)[None] - g * en.P
    lhs = g * np.einsum("s,kst->kt", d, en.P - P_old[None])
    shift_vec = np.linalg.solve(np.swapaxes(M_new, 1, 2), lhs[..., None])[..., 0]
    if L_P is None or L_Q is None:
        lp, lq = lipschitz_constants(mdp, grid, policy_actions_per_state(pi, new), V[None])
        L_P_val = lp if L_P is None else float(L_P)
        L_Q_val = float(lq[0]) if L_Q is None else float(L_Q)
    else:
        L_P_val, L_Q_val = float(L_P), float(L_Q)
    step = np.linalg.norm(new - pi[None], axis=2)  # (K, S)
    delta = step.max(axis=1)
    delta_mean = step @ d
    dQ = adv @ d
    adv_max = np.abs(adv).max(axis=1)
    c = g / (1.0 - g)
    out = {
        "gamma": np.full(k_pol, g),
        "J_old": np.full(k_pol, J),
        "J_new": en.J,
        "improvement": improvement,
        "pdl_error": np.abs(improvement - pdl),
        "shift": shift,
        "shift_identity_error": np.abs(shift_vec - (en.d - d[None])).sum(axis=1),
        "shift_bound_old": c * dP @ d,
        "shift_bound_new": c * np.einsum("ks,ks->k", dP, en.d),
        "L_P": np.full(k_pol, L_P_val),
        "L_Q": np.full(k_pol, L_Q_val),
        "delta": delta,
        "delta_mean": delta_mean,
        "dQ": dQ,
        "adv_max": adv_max,
        # max_s (|A^pi(s, pi'(s))| - L_Q ||dpi(s)||) and the same for dP: <= 0 up to round-off
        "adv_excess": (np.abs(adv) - L_Q_val * step).max(axis=1),
        "dP_excess": (dP - L_P_val * step).max(axis=1),
        "phi_pair": c * (dP @ d) * adv_max,
        "phi_mix": c * L_P_val * L_Q_val * delta_mean * delta,
        "phi_delta": phi_delta(g, L_P_val, L_Q_val, delta),
        "V_new": en.V,
        "d_new": en.d,
        "adv": adv,
    }
    return out


# --------------------------------------------------------------------------------------
# A TD3+BC actor step with the exact critic
# --------------------------------------------------------------------------------------


def tanh_linear_policy(features: Array, theta: Array, scale: float = 1.0) -> Array:
    """Deterministic parametric policy pi_theta(s) = scale * tanh(features(s) @ theta)."""
    return scale * np.tanh(features @ theta)


def td3bc_actor_step(
    theta: Array,
    data_features: Array,
    data_actions: Array,
    q_and_grad: Callable[[Array], tuple[Array, Array]],
    alpha: float,
    lr: float,
    scale: float = 1.0,
) -> Array:
    """One gradient step on L(theta) = mean_i [-lambda Q(s_i, pi(s_i)) + ||pi(s_i) - a_i||^2].

    lambda = alpha / mean_i |Q(s_i, pi(s_i))| (held fixed, as TD3+BC detaches it).
    ``q_and_grad(actions)`` returns the exact Q of the current policy at the data states and
    its action gradient. Returns the new theta (plain gradient descent, no in-place change).
    """
    pre = data_features @ theta
    act = scale * np.tanh(pre)
    q, dq = q_and_grad(act)
    lam = alpha / max(float(np.mean(np.abs(q))), 1e-12)
    n = len(data_actions)
    g_act = (-lam * dq + 2.0 * (act - data_actions)) / n
    g_pre = g_act * scale * (1.0 - np.tanh(pre) ** 2)
    return theta - lr * data_features.T @ g_pre
