"""Offline RL algorithms, by CLI name."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .a2pr import A2PR, A2PRConfig
from .aspc import ASPC, ASPCConfig
from .base import Agent
from .cql import CQL, AdaptiveCQL, AdaptiveCQLConfig, CQLConfig
from .ensemble import SeedEnsemble
from .iql import IQL, AdaptiveIQL, AdaptiveIQLConfig, IQLConfig
from .rebrac import AdaptiveReBRAC, AdaptiveReBRACConfig, ReBRAC, ReBRACConfig
from .td3bc import TD3BC, TD3BCConfig
from .wpc import WPC, WPCConfig

ALGORITHMS: dict[str, type] = {
    "td3bc": TD3BC,
    "aspc": ASPC,
    "iql": IQL,
    "cql": CQL,
    "rebrac": ReBRAC,
    "wpc": WPC,
    "a2pr": A2PR,
    "iql-adaptive": AdaptiveIQL,
    "cql-adaptive": AdaptiveCQL,
    "rebrac-adaptive": AdaptiveReBRAC,
}


def config_for(name: str, **overrides: Any):
    """The algorithm's default config with ``overrides`` applied (unknown keys are an error)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; choose one of {', '.join(sorted(ALGORITHMS))}")
    cls = ALGORITHMS[name].Config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise KeyError(f"{name} has no setting(s) {unknown}; its settings are {sorted(known)}")
    return cls(**overrides)


def make(
    name: str,
    obs_dim: int,
    act_dim: int,
    max_action: float = 1.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: Any = None,
    **overrides: Any,
) -> Agent:
    """Build an agent by name: ``make("aspc", obs_dim, act_dim, max_action, seed=1)``."""
    if config is None:
        config = config_for(name, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return ALGORITHMS[name](obs_dim, act_dim, max_action, config=config, device=device, dtype=dtype)


__all__ = [
    "A2PR", "A2PRConfig", "ALGORITHMS", "ASPC", "ASPCConfig", "AdaptiveCQL", "AdaptiveCQLConfig", "AdaptiveIQL",
    "AdaptiveIQLConfig", "AdaptiveReBRAC", "AdaptiveReBRACConfig", "Agent", "CQL", "CQLConfig", "IQL", "IQLConfig",
    "ReBRAC", "ReBRACConfig", "SeedEnsemble", "TD3BC", "TD3BCConfig", "WPC", "WPCConfig", "config_for", "make",
]  # fmt: skip
