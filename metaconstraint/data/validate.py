"""Checks on datasets, with errors that name the field and the index.

Nothing is silently dropped: by default a bad value stops loading with a :class:`DataError`;
``nonfinite="drop"`` and ``out_of_bounds="clip" | "drop"`` repair instead, and every repair
is counted in a :class:`DataWarning` and in ``Transitions.notes``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .transitions import Transitions


class DataError(ValueError):
    """A dataset that cannot be used as it is; the message says what and where."""


class DataWarning(UserWarning):
    """The loader changed or left out data (it says how much)."""


def report(notes: list[str], message: str) -> None:
    """Record ``message`` in ``notes`` and emit it as a :class:`DataWarning`."""
    notes.append(message)
    warnings.warn(message, DataWarning, stacklevel=3)


def check_arrays(
    arrays: Mapping[str, Any], source: str, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Keys present, arrays 1-D/2-D as expected, same length, not empty. Returns float32/bool arrays."""
    missing = [k for k in required if k not in arrays or arrays[k] is None]
    if missing:
        found = sorted(str(k) for k in arrays)
        raise DataError(f"{source}: missing key(s) {missing} (found: {found})")
    out: dict[str, np.ndarray] = {}
    for key in list(required) + [k for k in optional if k in arrays and arrays[k] is not None]:
        try:
            arr = np.asarray(arrays[key])
        except Exception as err:  # h5py raises OSError for unreadable chunks
            raise DataError(f"{source}: cannot read key '{key}': {err}") from err
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DataError(f"{source}: field '{key}' has dtype {arr.dtype}; expected numbers")
        if key in ("rewards", "terminals", "timeouts"):
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != 1:
                raise DataError(f"{source}: field '{key}' has shape {arr.shape}; expected (N,)")
        else:
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2:
                raise DataError(f"{source}: field '{key}' has shape {arr.shape}; expected (N, dim)")
        if key in ("terminals", "timeouts"):
            if arr.dtype != bool:
                bad = np.flatnonzero((arr != 0) & (arr != 1))
                if bad.size:
                    raise DataError(
                        f"{source}: field '{key}' must be 0/1 but has {arr[bad[0]].item()!r} at index {bad[0]}"
                    )
            arr = arr.astype(bool)
        else:
            arr = arr.astype(np.float32, copy=False)
        out[key] = arr
    n = len(out[required[0]])
    for key, arr in out.items():
        if len(arr) != n:
            raise DataError(f"{source}: field '{key}' has {len(arr)} rows but '{required[0]}' has {n}")
    if n == 0:
        raise DataError(f"{source}: the dataset is empty (0 transitions)")
    for a, b in (("next_observations", "observations"), ("next_actions", "actions")):
        if a in out and out[a].shape[1] != out[b].shape[1]:
            raise DataError(f"{source}: field '{a}' has {out[a].shape[1]} columns but '{b}' has {out[b].shape[1]}")
    return out


def _first_bad(t: "Transitions", name: str, bad_rows: np.ndarray) -> str:
    i = int(np.flatnonzero(bad_rows)[0])
    value = np.asarray(getattr(t, name)[i]).tolist()
    return f"field '{name}' has a non-finite value at {t.where(i)}: {value}"


def check_finite(t: "Transitions", nonfinite: str = "raise") -> "Transitions":
    """NaN/Inf anywhere stops loading (``"raise"``) or drops the affected transitions (``"drop"``)."""
    if nonfinite not in ("raise", "drop"):
        raise ValueError(f"nonfinite must be 'raise' or 'drop', not {nonfinite!r}")
    fields = ("observations", "actions", "rewards", "next_observations")
    bad_by = {}
    for name in fields:
        arr = getattr(t, name)
        bad = ~np.isfinite(arr) if arr.ndim == 1 else ~np.isfinite(arr).all(axis=1)
        if bad.any():
            bad_by[name] = bad
    bad_next = t.next_action_mask & ~np.isfinite(t.next_actions).all(axis=1)
    if not bad_by and not bad_next.any():
        return t
    if nonfinite == "raise":
        if bad_by:
            name, rows = next(iter(bad_by.items()))
            total = int(np.logical_or.reduce(list(bad_by.values())).sum())
            raise DataError(
                f"{t.source}: {_first_bad(t, name, rows)} ({total} transition(s) with NaN/Inf in total; "
                "pass nonfinite='drop' to leave them out)"
            )
        # only a next action is bad: its own row is reported when it is checked as an action
        i = int(np.flatnonzero(bad_next)[0])
        raise DataError(f"{t.source}: field 'next_actions' has a non-finite value at {t.where(i)}")
    bad_rows = np.logical_or.reduce(list(bad_by.values())) if bad_by else np.zeros(len(t), bool)
    out = t.select(~bad_rows) if bad_rows.any() else t
    if len(out) == 0:
        raise DataError(f"{t.source}: every transition has NaN/Inf; nothing is left after dropping them")
    nm = out.next_action_mask & ~np.isfinite(out.next_actions).all(axis=1)
    if nm.any():
        out.next_action_mask = out.next_action_mask & ~nm
        out.next_actions = np.where(nm[:, None], 0.0, out.next_actions).astype(np.float32)
    per_field = ", ".join(f"{k}: {int(v.sum())}" for k, v in bad_by.items())
    report(out.notes, f"{t.source}: dropped {int(bad_rows.sum())} of {len(t)} transitions with NaN/Inf ({per_field}); "
                      f"{int(nm.sum())} next action(s) became undefined")
    return out


def check_actions(t: "Transitions", out_of_bounds: str = "raise", tol: float = 1e-5) -> "Transitions":
    """Actions outside ``t.action_space`` (beyond ``tol``): ``"raise"``, ``"clip"`` or ``"drop"``."""
    if out_of_bounds not in ("raise", "clip", "drop"):
        raise ValueError(f"out_of_bounds must be 'raise', 'clip' or 'drop', not {out_of_bounds!r}")
    if t.action_space is None:
        t.notes.append("action space unknown: actions were not checked against bounds")
        return t
    low, high = t.action_low, t.action_high
    if low.shape[0] != t.act_dim:
        raise DataError(
            f"{t.source}: field 'actions' has {t.act_dim} columns but the action space {t.action_space} has {low.shape[0]}"
        )
    slack = tol * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    outside = (t.actions < low - slack) | (t.actions > high + slack)
    rows = outside.any(axis=1)
    if not rows.any():
        return t
    i = int(np.flatnonzero(rows)[0])
    d = int(np.flatnonzero(outside[i])[0])
    where = (
        f"field 'actions' is outside the action space at {t.where(i)}, dimension {d}: {float(t.actions[i, d])!r} not in "
        f"[{float(low[d])!r}, {float(high[d])!r}]"
    )
    if out_of_bounds == "raise":
        raise DataError(
            f"{t.source}: {where} ({int(rows.sum())} transition(s) in total; pass out_of_bounds='clip' or 'drop')"
        )
    if out_of_bounds == "clip":
        t.actions = np.clip(t.actions, low, high).astype(np.float32)
        t.next_actions = np.where(t.next_action_mask[:, None], np.clip(t.next_actions, low, high), 0).astype(np.float32)
        report(t.notes, f"{t.source}: clipped the actions of {int(rows.sum())} of {len(t)} transitions into the action space")
        return t
    out = t.select(~rows)
    if len(out) == 0:
        raise DataError(f"{t.source}: every action is outside the action space; nothing is left after dropping them")
    bad_next = out.next_action_mask & ((out.next_actions < low - slack) | (out.next_actions > high + slack)).any(axis=1)
    out.next_action_mask = out.next_action_mask & ~bad_next
    out.next_actions = np.where(bad_next[:, None], 0.0, out.next_actions).astype(np.float32)
    report(out.notes, f"{t.source}: dropped {int(rows.sum())} of {len(t)} transitions with actions outside the action "
                      f"space; {int(bad_next.sum())} next action(s) became undefined")
    return out


def check_env_shapes(t: "Transitions", obs_dim: int, act_dim: int, env_name: str) -> None:
    """The dataset's observation and action sizes match the evaluation env's."""
    if t.obs_dim != obs_dim:
        raise DataError(
            f"{t.source}: field 'observations' has {t.obs_dim} features but the evaluation env {env_name} "
            f"observes {obs_dim}"
        )
    if t.act_dim != act_dim:
        raise DataError(
            f"{t.source}: field 'actions' has {t.act_dim} dimensions but the evaluation env {env_name} takes {act_dim}"
        )
