"""Reference returns for normalised scores: D4RL's constants for D4RL dataset names.

A score is ``100 * (return - ref_min) / (ref_max - ref_min)``: 0 is the random policy, 100 the
expert. D4RL datasets use the constants below (from D4RL's ``infos.py``, MuJoCo locomotion);
Minari datasets carry their own ``ref_min_score`` / ``ref_max_score`` in their metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

# env family -> (random return, expert return), as D4RL defines them
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

# the Gymnasium env closest to D4RL's (D4RL used the -v3 mujoco-py envs); same observation sizes
# except Ant (D4RL: 111, Ant-v5: 105), which the loader's observation check will report
D4RL_ENVS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}

# the D4RL AntMaze datasets, as metaconstraint.config.dataset_key spells them (keys of algorithms'
# per-dataset presets)
ANTMAZE_DATASETS = tuple(
    f"antmaze-{m}" for m in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
)

_D4RL_NAME = re.compile(
    r"^(?P<env>halfcheetah|hopper|walker2d|ant)[-_](?P<kind>random|medium|expert|medium[-_]replay|medium[-_]expert|"
    r"full[-_]replay)(?:[-_]v\d+)?$"
)


def d4rl_family(name: str | Path) -> str | None:
    """``"hopper"`` for ``"hopper-medium-v2"`` or ``".../hopper_medium-v2.hdf5"``; ``None`` if not a D4RL name."""
    stem = Path(str(name)).name
    for suffix in (".hdf5", ".h5", ".npz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    m = _D4RL_NAME.match(stem.lower())
    return m.group("env") if m else None


def d4rl_reference(name: str | Path) -> tuple[float, float] | None:
    """D4RL's ``(ref_min, ref_max)`` for a D4RL dataset name, else ``None``."""
    fam = d4rl_family(name)
    return D4RL_REF_SCORES[fam] if fam else None


def normalize_return(returns, ref_min: float, ref_max: float):
    """``100 * (returns - ref_min) / (ref_max - ref_min)`` (numbers or numpy arrays)."""
    if ref_max == ref_min:
        raise ValueError(f"reference scores are equal ({ref_min}); cannot normalise")
    return 100.0 * (returns - ref_min) / (ref_max - ref_min)
