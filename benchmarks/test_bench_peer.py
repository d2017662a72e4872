"""Our TD3+BC against d3rlpy's TD3PlusBC: training steps per second, side by side.

Equal networks (actor and both critics: two hidden layers of ``width``, ReLU, the original
TD3+BC critic, i.e. our ``critic="plain"``; the test checks that the parameter counts are
equal), equal hyper-parameters (batch, learning rates, policy delay 2, target smoothing,
alpha 2.5), the same device and the same torch thread count, one process, alternating blocks
of ``peer_block`` updates. Two loops are timed:

* ``update``: updates on pre-drawn batches. d3rlpy's ``update(TransitionMiniBatch)`` turns
  its numpy batch into tensors on the device (its API takes numpy); ours takes a ``Batch``
  already on the device. Each library's public per-step call, as a training loop uses it.
* ``train_loop``: draw a uniform batch and update, as each library's training loop does it:
  d3rlpy ``ReplayBuffer.sample_transition_batch`` (what ``fit`` calls) then ``update``; ours
  ``torch.randint`` indexing into device tensors (what ``metaconstraint``'s sampler does).

d3rlpy is the optional extra ``bench`` (install it as benchmarks/README.md says: its pin of
gymnasium 1.0 would otherwise downgrade ours); without it the suite is skipped with a message.

In the ``update`` loop a third contender, our TD3+BC with a fused critic Adam
(``torch.optim.Adam(..., fused=True)``, swapped in on the instance), measures a proposed
change; it is reported separately as a what-if.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch

import _harness as H
from metaconstraint import algos
from metaconstraint.batch import Batch

DATASET_SIZE = 100_000  # transitions in the synthetic dataset the train_loop samples from
EPISODE_LENGTH = 1000


def _import_d3rlpy():
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # d3rlpy imports gym, which prints an "unmaintained" notice
        try:
            import d3rlpy
        except ImportError as e:  # pragma: no cover - depends on the environment
            pytest.skip(
                f"d3rlpy is not installed ({e}): the peer comparison needs it (optional extra `bench`); "
                "benchmarks/README.md shows how to install it without downgrading gymnasium"
            )
    return d3rlpy


def _d3rlpy_device(device: torch.device) -> str:
    return "cpu:0" if device.type == "cpu" else f"cuda:{device.index or 0}"


def _d3rlpy_agent(d3rlpy, width: int, batch_size: int, device: torch.device):
    enc = d3rlpy.models.encoders.VectorEncoderFactory(hidden_units=[width, width])
    cfg = d3rlpy.algos.TD3PlusBCConfig(
        batch_size=batch_size,
        actor_learning_rate=3e-4,
        critic_learning_rate=3e-4,
        actor_encoder_factory=enc,
        critic_encoder_factory=enc,
        gamma=0.99,
        tau=0.005,
        target_smoothing_sigma=0.2,
        target_smoothing_clip=0.5,
        alpha=2.5,
        update_actor_interval=2,
        n_critics=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        algo = cfg.create(device=_d3rlpy_device(device))
    algo.create_impl((H.OBS_DIM,), H.ACT_DIM)
    return algo


def _ours(width: int, device: torch.device):
    return algos.make(
        "td3bc", H.OBS_DIM, H.ACT_DIM, 1.0, device=device, critic="plain", actor_hidden=(width, width),
        critic_width=width, seed=0,
    )


def _ours_with_fused_critic_adam(width: int, device: torch.device):
    """Our TD3+BC with its critic's ``torch.optim.Adam`` swapped for ``fused=True`` (what-if).

    Same lr, betas and eps; the fused kernel updates every critic tensor in one call instead of
    ~10 small ops per tensor (CPU fused Adam needs torch >= 2.4). ``None`` where unsupported.
    """
    agent = _ours(width, device)
    try:
        agent.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=agent.config.critic_lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return None
    return agent


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _to_d3rlpy_batch(d3rlpy, b: Batch):
    def np32(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    return d3rlpy.dataset.TransitionMiniBatch(
        observations=np32(b.observations),
        actions=np32(b.actions),
        rewards=np32(b.rewards)[:, None],
        next_observations=np32(b.next_observations),
        next_actions=np32(b.next_actions),
        terminals=np32(b.terminals)[:, None],
        intervals=np.ones((len(b.rewards), 1), dtype=np.float32),
        transitions=[],
    )


def _dataset_arrays(seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((DATASET_SIZE, H.OBS_DIM)).astype(np.float32)
    timeouts = np.zeros(DATASET_SIZE, dtype=np.float32)
    timeouts[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = 1.0
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (DATASET_SIZE, H.ACT_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(DATASET_SIZE).astype(np.float32),
        "terminals": np.zeros(DATASET_SIZE, dtype=np.float32),
        "timeouts": timeouts,
    }


class _OurSampler:
    """Uniform batches by ``torch.randint`` indexing of device tensors (next obs = obs[i + 1])."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int, device: torch.device):
        t = {k: torch.as_tensor(v, device=device) for k, v in data.items()}
        self.obs, self.act, self.rew, self.term = t["observations"], t["actions"], t["rewards"], t["terminals"]
        self.n, self.batch_size, self.device = len(self.obs) - 1, batch_size, device
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.ones = torch.ones(batch_size, device=device)

    def sample(self) -> Batch:
        i = torch.randint(0, self.n, (self.batch_size,), generator=self.gen, device=self.device)
        return Batch(self.obs[i], self.act[i], self.rew[i], self.obs[i + 1], self.term[i], self.act[i + 1], self.ones)


@pytest.mark.parametrize("loop", ["update", "train_loop"])
def test_peer_steps_per_second(benchmark, recorder, device, size, width, batch_size, loop):
    d3rlpy = _import_d3rlpy()
    theirs = _d3rlpy_agent(d3rlpy, width, batch_size, device)
    ours = _ours(width, device)
    mods = theirs.impl.modules
    their_actor, their_critic = _count([mods.policy]), _count([mods.q_funcs])
    our_actor, our_critic = _count([ours.actor]), _count([ours.critic])
    assert (their_actor, their_critic) == (our_actor, our_critic), "networks differ in size"

    n = size["peer_block"]
    updates, min_rounds = H.budget(size, batch_size)
    rounds = max(min_rounds, updates // n)
    if loop == "update":
        batches = H.random_batches(8, batch_size, device, seed=4)
        their_batches = [_to_d3rlpy_batch(d3rlpy, b) for b in batches]

        def ours_next() -> Batch:
            ours_next.i += 1
            return batches[ours_next.i % len(batches)]

        def theirs_next():
            theirs_next.i += 1
            return their_batches[theirs_next.i % len(their_batches)]

        ours_next.i = theirs_next.i = 0
    else:
        data = _dataset_arrays()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = d3rlpy.dataset.MDPDataset(**data)
        sampler = _OurSampler(data, batch_size, device)
        ours_next = sampler.sample

        def theirs_next():
            return dataset.sample_transition_batch(batch_size)

    their_losses: list[dict[str, float]] = []

    def run_theirs() -> None:
        for _ in range(n):
            their_losses.append(theirs.update(theirs_next()))

    def run_ours() -> None:
        for _ in range(n):
            ours.update(ours_next())

    fns = {"ours": run_ours, "d3rlpy": run_theirs}
    fused = _ours_with_fused_critic_adam(width, device) if loop == "update" else None
    if fused is not None:  # a what-if for the report, not what the library does today

        def run_fused() -> None:
            for _ in range(n):
                fused.update(ours_next())

        fns["ours_fused_adam"] = run_fused
    alt = H.Alternating(fns, device)
    alt.warmup(1)
    benchmark.pedantic(alt.round, rounds=rounds, iterations=1, warmup_rounds=0)

    assert ours.num_updates == (rounds + 1) * n
    assert len(their_losses) == (rounds + 1) * n
    assert all(np.isfinite(v) for v in their_losses[-1].values())
    assert {"actor_loss", "critic_loss"} <= set(their_losses[-1]) | set(their_losses[-2])  # both steps ran

    ours_sps = n / alt.median("ours")
    theirs_sps = n / alt.median("d3rlpy")
    row = {
        "loop": loop,
        "width": width,
        "batch_size": batch_size,
        "ours_steps_per_s": ours_sps,
        "d3rlpy_steps_per_s": theirs_sps,
        "speedup": ours_sps / theirs_sps,
        "paired_speedup": H.spread(alt.paired_ratios("d3rlpy", "ours")),
        "actor_params": our_actor,
        "critic_params": our_critic,
        "updates_per_block": n,
        "rounds": rounds,
    }
    if fused is not None:
        row["whatif_fused_critic_adam_steps_per_s"] = n / alt.median("ours_fused_adam")
        row["whatif_fused_critic_adam_speedup"] = row["whatif_fused_critic_adam_steps_per_s"] / theirs_sps
    benchmark.extra_info.update({k: v for k, v in row.items() if not isinstance(v, dict)})
    summary = (
        f"{loop}, w{width} b{batch_size}: ours {ours_sps:.1f} steps/s, d3rlpy {theirs_sps:.1f} steps/s, "
        f"speedup {row['speedup']:.2f}"
    )
    if fused is not None:
        summary += (
            f"; what-if fused critic Adam {row['whatif_fused_critic_adam_steps_per_s']:.1f} steps/s "
            f"(speedup {row['whatif_fused_critic_adam_speedup']:.2f})"
        )
    recorder.add("peer", row, summary, d3rlpy=d3rlpy.__version__, critic="plain", dataset_size=DATASET_SIZE)
