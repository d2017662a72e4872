"""Golden trajectories: every algorithm's 200 float64 updates reproduce the recorded ones.

The files were recorded by ``tests/golden/make_golden.py`` before the bilevel engine was
rebuilt on :mod:`metaconstraint.hypergrad`; a refactor must keep them (parameters,
coefficient and every log) to 1e-10. A deliberate change of numbers re-records them.
"""

from __future__ import annotations

import numpy as np
import pytest

from .golden.make_golden import CASES, HERE, trajectory

TOL = 1e-10


def max_error(case: str) -> tuple[float, str]:
    """The largest error relative to max(1, |reference|) over every recorded array, and where."""
    ref = np.load(HERE / f"{case}.npz", allow_pickle=False)
    now = trajectory(case)
    assert set(now) == set(ref.files), (sorted(set(now) ^ set(ref.files)))
    worst, where = 0.0, ""
    for k in ref.files:
        a, b = now[k], ref[k]
        assert a.shape == b.shape, k
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{k}: logged at different updates"
        mask = ~np.isnan(b)
        if not mask.any():
            continue
        err = float(np.max(np.abs(a[mask] - b[mask])) / max(1.0, float(np.max(np.abs(b[mask])))))
        if err > worst:
            worst, where = err, k
    return worst, where


@pytest.mark.parametrize("case", list(CASES))
def test_reproduces_golden_trajectory(case):
    err, where = max_error(case)
    assert err <= TOL, f"{case}: {where} differs from the golden trajectory by {err:.3g} (relative)"


def test_golden_catches_a_change(monkeypatch):
    """The comparison can fail: a coefficient lr off by 1e-6 is seen."""
    algo, overrides = CASES["aspc-ema-L1L2L3"]
    block = overrides["constraint"]
    monkeypatch.setitem(CASES, "aspc-ema-L1L2L3", (algo, dict(constraint=dict(block, lr=block["lr"] * (1 + 1e-6)))))
    err, _ = max_error("aspc-ema-L1L2L3")
    assert err > TOL
