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


# README python blocks: each either runs as written or starts with a "# fragment: ..." line saying what
# it needs. Blocks that train only have their step counts shortened here (the one change made to them).
README = EXAMPLES.parent / "README.md"
SHORTER = {  # a line of the block -> (text, replacement)
    "planned_steps=3000, actor_hidden=(64, 64), critic_width=64)": ("3000", "300"),
    "mc.algos.TD3BCConfig(critic=\"robust\", planned_steps=20_000)": ("20_000", "200"),
}


def readme_blocks() -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _block_id(block: str) -> str:
    first = next(ln for ln in block.splitlines() if ln.strip() and not ln.startswith(("import", "from")))
    return first[:40]


RUNNABLE = [b for b in readme_blocks() if not b.startswith("# fragment:")]


def test_readme_blocks_are_runnable_or_labelled_fragments():
    import re

    blocks = readme_blocks()
    fragments = [b for b in blocks if b.startswith("# fragment:")]
    assert len(blocks) >= 10 and len(fragments) >= 4 and len(RUNNABLE) >= 5
    for b in fragments:  # a label says what the fragment needs, not just that it is one
        assert len(b.splitlines()[0]) > len("# fragment: ") + 10
    assert all("fragment" not in b.splitlines()[0] for b in RUNNABLE)
    assert not any(re.search(r'device="cuda"[,)]', b) for b in RUNNABLE)  # the README installs the CPU build


@pytest.mark.parametrize("block", RUNNABLE, ids=[_block_id(b) for b in RUNNABLE])
def test_readme_python_block_runs(block, capsys, tmp_path, monkeypatch):
    """Every README python block that is not labelled a fragment runs as written (training loops shortened)."""
    import torch

    for line, (old, new) in SHORTER.items():
        if line in block:
            block = block.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))  # blocks that write datasets write here
    dtype = torch.get_default_dtype()
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_block"})
    finally:
        torch.set_default_dtype(dtype)
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    if "print(" in block:
        assert out.strip()
