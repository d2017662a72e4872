"""Counting device->host reads in tests: every way a tensor's value reaches Python is patched."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

READERS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__", "__repr__")


def optimizer_step_tensors(*optimizers: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The step counts ``torch.optim`` keeps per parameter: CPU tensors even when the parameters are
    on a GPU (non-capturable, non-fused optimizers), so reading them is no device->host transfer."""
    return [s["step"] for opt in optimizers for s in opt.state.values() if "step" in s]


@contextlib.contextmanager
def count_host_reads(exclude: Iterable[torch.Tensor] = ()) -> Iterator[list[str]]:
    """Yield a list that collects the name of every value read of a tensor (those in ``exclude``
    excepted) while the block runs."""
    skip = {id(t) for t in exclude}
    calls: list[str] = []
    originals = {m: getattr(torch.Tensor, m) for m in READERS}

    def spy_for(name: str, original):
        def spy(self, *args, **kwargs):
            if id(self) not in skip:
                calls.append(name)
            return original(self, *args, **kwargs)

        return spy

    for name, original in originals.items():
        setattr(torch.Tensor, name, spy_for(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
