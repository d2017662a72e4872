"""The examples/ scripts run as documented (small sizes)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_adaptive_constraint_recipe_learns_its_coefficient(capsys):
    ex = load_example("custom_adaptive_constraint")
    agent = ex.main(steps=200, width=16, batch_size=32)
    out = capsys.readouterr().out
    assert out.count("coef") == 5 and "nan" not in out
    # 100 actor steps -> 10 coefficient updates, each moving rho by about the Adam lr (2e-3)
    coef = float(agent.constraint.value())
    assert math.isfinite(coef) and coef != pytest.approx(2.5, abs=1e-4)
    assert abs(coef - 2.5) < 0.05
    assert agent.constraint.inner_steps == 100
