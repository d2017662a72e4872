"""Test-wide settings."""

import os

import torch

# The tests use tiny networks, where one intra-op thread is fastest and several pytest
# processes or background jobs on a 2-core machine would otherwise oversubscribe the CPU.
torch.set_num_threads(int(os.environ.get("METACONSTRAINT_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")
