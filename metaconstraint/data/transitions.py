"""The transitions object every loader returns, and how it is built with correct episode boundaries.

Invariants (checked by :meth:`Transitions.check`):

* every episode ends with exactly one of ``terminals`` (a true termination: no bootstrapping)
  or ``timeouts`` (a time limit, or the episode was cut: bootstrapping continues);
* ``episode_starts[0]`` is true and ``episode_starts[i + 1] == terminals[i] | timeouts[i]``,
  so no transition pairs the last state of one episode with the first state of the next;
* ``next_actions[i]`` is the dataset's action at ``next_observations[i]`` where
  ``next_action_mask[i]`` is true, and zeros elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .validate import DataError, check_arrays, report


@dataclass
class EpisodeArrays:
    """One episode as Minari stores it: ``observations`` has one more row than ``actions``."""

    observations: np.ndarray  # (T + 1, obs_dim)
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool


@dataclass
class Transitions:
    """A dataset of transitions as flat numpy arrays, plus what is known about its env."""

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) bool, true terminations only
    timeouts: np.ndarray  # (N,) bool, episode ended without termination
    next_actions: np.ndarray  # (N, act_dim) float32, zeros where the mask is false
    next_action_mask: np.ndarray  # (N,) bool
    episode_starts: np.ndarray  # (N,) bool
    env_id: str | None = None
    env_spec: Any = None  # gymnasium EnvSpec of the evaluation env, when known
    observation_space: Any = None
    action_space: Any = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    source: str = ""
    obs_keys: tuple[str, ...] | None = None  # Dict observations: the keys concatenated, in order
    notes: list[str] = field(default_factory=list)  # everything the loader changed or inferred
    metadata: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # short: the arrays are in the fields, summary() has the returns
        refs = (f", ref scores {self.ref_min_score:g}/{self.ref_max_score:g}"
                if self.ref_min_score is not None and self.ref_max_score is not None else "")
        return (f"Transitions({self.source or 'arrays'!r}: {len(self):,} transitions, {self.num_episodes:,} episodes, "
                f"obs_dim {self.obs_dim}, act_dim {self.act_dim}, env {self.env_id}{refs})")

    # ------------------------------------------------------------------ sizes and spaces
    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def size(self) -> int:
        return len(self)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def action_low(self) -> np.ndarray | None:
        return None if self.action_space is None else np.asarray(self.action_space.low, np.float32).reshape(-1)

    @property
    def action_high(self) -> np.ndarray | None:
        return None if self.action_space is None else np.asarray(self.action_space.high, np.float32).reshape(-1)

    @property
    def max_action(self) -> float:
        """Largest absolute action bound (what ``nets.Actor`` scales by); from the data if the space is unknown."""
        if self.action_space is not None:
            return float(max(np.abs(self.action_low).max(), np.abs(self.action_high).max()))
        return float(np.abs(self.actions).max()) if len(self) else 1.0

    # ------------------------------------------------------------------ episodes
    @property
    def episode_ends(self) -> np.ndarray:
        return self.terminals | self.timeouts

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.sum())

    def episode_index(self) -> np.ndarray:
        """Episode number of every transition."""
        return np.cumsum(self.episode_starts) - 1

    def episode_lengths(self) -> np.ndarray:
        starts = np.flatnonzero(self.episode_starts)
        return np.diff(np.append(starts, len(self)))

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode (float64)."""
        starts = np.flatnonzero(self.episode_starts)
        if starts.size == 0:
            return np.zeros(0)
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the transitions themselves (observations, actions, rewards, next observations,
        terminals, timeouts, episode starts; their dtypes and shapes included), not of the file or its metadata.

        Two builds of "the same" dataset agree on it only when they hold the same numbers: a TD3 behaviour
        retrained on other hardware or library versions makes other data under the same id. Runs record it
        (``dataset_sha256`` in summary.json) and ``report`` warns when one dataset's runs disagree."""
        h = hashlib.sha256()
        for name in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                     "episode_starts"):
            a = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def where(self, index: int) -> str:
        """``"index i (episode e, step s)"``, for error messages."""
        ep = self.episode_index()[index]
        step = index - np.flatnonzero(self.episode_starts)[ep]
        return f"index {index} (episode {ep}, step {step})"

    # ------------------------------------------------------------------ building
    @classmethod
    def from_episodes(cls, episodes: Iterable[EpisodeArrays], **info: Any) -> "Transitions":
        """Flatten Minari-style episodes; a last step with neither flag is marked a timeout (noted)."""
        obs, act, rew, nobs, term, tout, nact, mask, start = ([] for _ in range(9))
        unflagged = 0
        n_eps = 0
        for k, ep in enumerate(episodes):
            T = len(ep.rewards)
            if T == 0:
                continue
            o = np.asarray(ep.observations)
            a = np.asarray(ep.actions)
            if o.shape[0] != T + 1 or a.shape[0] != T:
                raise DataError(
                    f"episode {k}: observations has {o.shape[0]} rows and actions {a.shape[0]} for {T} rewards "
                    f"(expected {T + 1} and {T})"
                )
            t = np.asarray(ep.terminations, bool).reshape(-1).copy()
            tr = np.asarray(ep.truncations, bool).reshape(-1).copy()
            ends = t | tr
            if not ends[-1]:
                tr[-1] = True
                unflagged += 1
            # a flag in the middle of an episode splits it there (next actions stop there too)
            ends = t | tr
            obs.append(o[:-1])
            nobs.append(o[1:])
            act.append(a)
            rew.append(np.asarray(ep.rewards).reshape(-1))
            term.append(t)
            tout.append(tr & ~t)
            na = np.zeros_like(a)
            na[:-1] = a[1:]
            m = np.zeros(T, bool)
            m[:-1] = ~ends[:-1]
            na[~m] = 0
            nact.append(na)
            mask.append(m)
            s = np.zeros(T, bool)
            s[0] = True
            s[1:] = ends[:-1]
            start.append(s)
            n_eps += 1
        if n_eps == 0:
            raise DataError(f"dataset {info.get('source') or ''!r} is empty: it has no transitions")
        notes = list(info.pop("notes", []))
        if unflagged:
            notes.append(f"{unflagged} episode(s) end with neither a termination nor a truncation flag: marked as timeouts")
        out = cls(
            observations=np.concatenate(obs).astype(np.float32),
            actions=np.concatenate(act).astype(np.float32),
            rewards=np.concatenate(rew).astype(np.float32),
            next_observations=np.concatenate(nobs).astype(np.float32),
            terminals=np.concatenate(term),
            timeouts=np.concatenate(tout),
            next_actions=np.concatenate(nact).astype(np.float32),
            next_action_mask=np.concatenate(mask),
            episode_starts=np.concatenate(start),
            notes=notes,
            **info,
        )
        out.check()
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], source: str = "arrays", **info: Any) -> "Transitions":
        """Build from D4RL-style flat arrays (``observations, actions, rewards, terminals, timeouts``,
        optional ``next_observations``).

        With ``next_observations``: a place where ``next_observations[i] != observations[i + 1]``
        inside an episode is a hidden episode end (marked a timeout and noted). Without them:
        ``next_observations[i] = observations[i + 1]`` inside an episode; a transition that ends
        by a timeout has no known next state and is left out (counted in a warning and the
        notes); a terminal one keeps ``next_observations = observations`` (unused: no bootstrap).
        ``timeouts`` may be omitted only when ``next_observations`` is given.
        """
        has_next = "next_observations" in arrays and arrays["next_observations"] is not None
        required = ["observations", "actions", "rewards", "terminals"] + ([] if has_next else ["timeouts"])
        a = check_arrays(arrays, source, required, optional=["timeouts", "next_observations", "next_actions"])
        obs, act, rew = a["observations"], a["actions"], a["rewards"]
        term = a["terminals"].astype(bool)
        n = len(rew)
        tout = a["timeouts"].astype(bool) & ~term if "timeouts" in a else np.zeros(n, bool)
        notes: list[str] = list(info.pop("notes", []))
        keep = np.ones(n, bool)
        if has_next:
            nobs = a["next_observations"]
            cont = np.zeros(n, bool)
            # rows with NaN/Inf are left to the finiteness check, not taken for episode ends
            same = np.isclose(nobs[:-1], obs[1:], rtol=1e-6, atol=1e-6) | ~np.isfinite(nobs[:-1]) | ~np.isfinite(obs[1:])
            cont[:-1] = np.all(same, axis=1)
            hidden = ~(term | tout) & ~cont
            hidden[-1] = False
            if hidden.any():
                notes.append(
                    f"{int(hidden.sum())} place(s) where next_observations[i] != observations[i+1] with neither "
                    f"terminal nor timeout (first at index {int(np.flatnonzero(hidden)[0])}): treated as episode ends "
                    "(timeouts)"
                )
                tout |= hidden
            if not (term[-1] or tout[-1]):
                tout[-1] = True
                notes.append("the last episode is cut by the end of the data: its last transition is marked a timeout")
        else:
            nobs = np.empty_like(obs)
            nobs[:-1] = obs[1:]
            nobs[-1] = obs[-1]
            no_next = tout.copy()
            if not term[-1]:
                no_next[-1] = True
            if term.any():
                nobs[term] = obs[term]
                notes.append(
                    f"{int(term.sum())} terminal transition(s) have no recorded next observation (no "
                    "next_observations key): next_observations = observations there (unused, a terminal does not bootstrap)"
                )
            if no_next.any():
                keep = ~no_next
                report(
                    notes,
                    f"{source}: {int(no_next.sum())} transition(s) that end an episode by timeout (or the end of the "
                    "data) have no next observation (no next_observations key) and were left out",
                )
        ends = term | tout
        nact = np.zeros_like(act)
        mask = np.zeros(n, bool)
        mask[:-1] = ~ends[:-1]
        nact[:-1] = act[1:]
        nact[~mask] = 0
        start = np.zeros(n, bool)
        start[0] = True
        start[1:] = ends[:-1]
        full = cls(
            observations=obs, actions=act, rewards=rew, next_observations=nobs.astype(np.float32),
            terminals=term, timeouts=tout, next_actions=nact, next_action_mask=mask, episode_starts=start,
            source=source, notes=notes, **info,
        )
        out = full if keep.all() else full.select(keep)
        if len(out) == 0:
            raise DataError(f"dataset {source!r} is empty after leaving out transitions without a next observation")
        out.check()
        return out

    # ------------------------------------------------------------------ editing
    def select(self, keep: np.ndarray) -> "Transitions":
        """Keep rows where ``keep`` is true; a kept row whose successor goes becomes an episode end
        (timeout), a kept row whose predecessor goes becomes an episode start."""
        keep = np.asarray(keep, bool)
        if keep.shape != (len(self),):
            raise ValueError(f"select needs a boolean mask of length {len(self)}, got shape {keep.shape}")
        ends = self.episode_ends
        succ_gone = np.zeros(len(self), bool)
        succ_gone[:-1] = ~keep[1:] & ~ends[:-1]
        pred_gone = np.zeros(len(self), bool)
        pred_gone[1:] = ~keep[:-1]
        timeouts = self.timeouts | (succ_gone & ~self.terminals)
        starts = self.episode_starts | pred_gone
        arrays = {
            f.name: getattr(self, f.name)[keep]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        arrays["timeouts"], arrays["episode_starts"] = timeouts[keep], starts[keep]
        if len(arrays["rewards"]):
            arrays["episode_starts"][0] = True
        return dataclasses.replace(self, **arrays, notes=list(self.notes), metadata=dict(self.metadata))

    def check(self) -> None:
        """Assert the invariants in the module docstring (a :class:`DataError` names the first breach)."""
        n = len(self)
        for name in ("observations", "actions", "next_observations", "next_actions"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise DataError(f"field '{name}' has shape {arr.shape}, expected ({n}, d)")
        for name in ("terminals", "timeouts", "next_action_mask", "episode_starts"):
            arr = getattr(self, name)
            if arr.shape != (n,) or arr.dtype != bool:
                raise DataError(f"field '{name}' has shape {arr.shape} and dtype {arr.dtype}, expected ({n},) bool")
        if n == 0:
            raise DataError(f"dataset {self.source!r} is empty: it has no transitions")
        both = np.flatnonzero(self.terminals & self.timeouts)
        if both.size:
            raise DataError(f"field 'timeouts' is set together with 'terminals' at index {both[0]}")
        if not self.episode_starts[0]:
            raise DataError("field 'episode_starts' is false at index 0")
        bad = np.flatnonzero(self.episode_starts[1:] != self.episode_ends[:-1])
        if bad.size:
            raise DataError(f"field 'episode_starts' disagrees with terminals|timeouts at index {bad[0] + 1}")
        if not self.episode_ends[-1]:
            raise DataError(f"the last transition (index {n - 1}) is neither a terminal nor a timeout")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The per-transition arrays by name."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), np.ndarray)
        }

    def summary(self) -> str:
        rets = self.episode_returns()
        return (
            f"{self.source or 'dataset'}: {len(self)} transitions, {self.num_episodes} episodes, obs_dim {self.obs_dim}, "
            f"act_dim {self.act_dim}, env {self.env_id}, return mean {rets.mean():.1f} "
            f"(min {rets.min():.1f}, max {rets.max():.1f}), terminals {int(self.terminals.sum())}, "
            f"timeouts {int(self.timeouts.sum())}"
        )


def concatenate(parts: Sequence[Transitions]) -> Transitions:
    """Join datasets of the same env end to end (episodes never merge: each part ends with an episode end)."""
    if not parts:
        raise DataError("concatenate needs at least one dataset")
    first = parts[0]
    for p in parts[1:]:
        if (p.obs_dim, p.act_dim) != (first.obs_dim, first.act_dim):
            raise DataError(
                f"cannot concatenate {p.source!r} (obs_dim {p.obs_dim}, act_dim {p.act_dim}) with {first.source!r} "
                f"(obs_dim {first.obs_dim}, act_dim {first.act_dim})"
            )
    arrays = {k: np.concatenate([p.to_arrays()[k] for p in parts]) for k in first.to_arrays()}
    out = dataclasses.replace(first, **arrays, source=" + ".join(p.source for p in parts),
                              notes=[n for p in parts for n in p.notes], metadata=dict(first.metadata))
    out.check()
    return out
