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


def test_custom_outer_objective_recipe_uses_its_lookahead(capsys, monkeypatch):
    ex = load_example("custom_outer_objective")
    seen = []
    original = ex.mean_loss_along_lookahead

    def spy(trajectory, coef):
        seen.append(len(trajectory.params))
        return original(trajectory, coef)

    monkeypatch.setattr(ex, "mean_loss_along_lookahead", spy)
    agent = ex.main(steps=200, width=16, batch_size=32)
    out = capsys.readouterr().out
    assert out.count("alpha") == 5 and "nan" not in out
    assert seen == [6] * 10  # 100 actor steps -> 10 alpha updates, each through 5 lookahead steps
    alpha = float(agent.constraint.value())
    assert math.isfinite(alpha) and alpha != pytest.approx(2.5, abs=1e-4)


@pytest.mark.parametrize("marker", ["con = AdaptiveConstraint(", "hg = mc.hypergrad.unrolled("])
def test_readme_api_blocks_run(marker, capsys):
    """The README's constraint-module and hypergradient blocks run as written."""
    import re

    import torch

    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if marker in b]
    assert len(blocks) == 1, marker
    dtype = torch.get_default_dtype()
    try:
        exec(compile(blocks[0], "README.md", "exec"), {})
    finally:
        torch.set_default_dtype(dtype)
    out = capsys.readouterr().out
    assert out.strip() and "nan" not in out.lower()
