"""Every algorithm has every member of the Agent contract (what the trainer, config, export and plotting read)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaconstraint import algos
from metaconstraint.algos.base import Agent


@pytest.mark.parametrize("name", sorted(algos.ALGORITHMS))
def test_every_algorithm_has_the_full_agent_contract(name):
    cls = algos.ALGORITHMS[name]
    assert cls.name == name
    assert isinstance(cls.coefficient_name, str) and cls.coefficient_name in cls.metric_names
    assert isinstance(cls.batch_size, int) and cls.batch_size > 0
    assert all(isinstance(k, str) and isinstance(v, dict) for k, v in cls.presets.items())
    agent = algos.make(name, 3, 2, 1.0, actor_hidden=(8, 8)) if "actor_hidden" in cls.Config.__dataclass_fields__ \
        else algos.make(name, 3, 2, 1.0)
    assert isinstance(agent, Agent)
    assert isinstance(agent.actor, nn.Module) and agent.export_module() is None
    assert torch.isfinite(agent.constraint.value()).all()


def test_a_class_missing_a_member_is_not_an_agent():
    class NoConstraint(algos.TD3BC):
        pass

    agent = NoConstraint(3, 2)
    del agent.constraint
    assert not isinstance(agent, Agent)
