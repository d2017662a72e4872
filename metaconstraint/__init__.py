"""metaconstraint: adaptive policy constraints for offline RL.

Submodules are imported on first use (``mc.optim``, ``mc.hypergrad``, ...), so
``import metaconstraint`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "optim",
    "hypergrad",
    "nets",
    "batch",
    "constraint",
    "algos",
    "data",
    "evaluation",
    "training",
    "rundir",
    "metrics",
    "config",
    "plotting",
    "report",
    "export",
    "cli",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'metaconstraint' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
