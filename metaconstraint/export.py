"""``export``: a trained policy as one TorchScript file that needs only PyTorch.

The file maps *raw* environment observations to actions: the dataset's state normalisation
``(obs - mean) / (std + eps)`` and the clip to the action box are built in::

    import torch
    policy = torch.jit.load("policy.pt")
    action = policy(torch.as_tensor(obs, dtype=torch.float32))   # (obs_dim,) or (batch, obs_dim)

TorchScript takes tensors only (a numpy array raises a type error), and the file's code is run
by whoever loads it with ``torch.jit.load``. :func:`load_policy` is the other way in: it rebuilds
the policy from plain data stored beside the code (``metaconstraint_policy.pt``, read with
``torch.load(weights_only=True)``, so nothing in the file runs) and takes numpy arrays or tensors::

    from metaconstraint.export import load_policy
    policy = load_policy("policy.pt")
    action = policy(obs)          # numpy in, numpy out; (obs_dim,) or (batch, obs_dim)

``metaconstraint.json`` inside the file (``torch.jit.load(path, _extra_files=...)``, or
:func:`read_metadata`) records the algorithm, dataset, env id, training step and normalisation
constants. ``metaconstraint collect --policy policy.pt`` records data with such a file.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import torch
from torch import Tensor, nn

from .algos.base import Agent
from .rundir import LoadedRun, RunError, load_run

__all__ = ["ExportedPolicy", "LoadedPolicy", "export_policy", "is_exported_policy", "load_policy", "policy_module",
           "read_metadata"]

PAYLOAD = "metaconstraint_policy.pt"  # plain data beside the TorchScript code: what load_policy rebuilds from


class ExportedPolicy(nn.Module):
    """``raw obs -> clip(actor((obs - mean) / denom), low, high)``."""

    def __init__(self, actor: nn.Module, mean: Tensor, denom: Tensor, low: Tensor, high: Tensor):
        super().__init__()
        self.actor = actor
        self.register_buffer("mean", mean)
        self.register_buffer("denom", denom)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, obs: Tensor) -> Tensor:
        x = (obs.to(self.mean.dtype) - self.mean) / self.denom
        return torch.max(torch.min(self.actor(x), self.high), self.low)


class _AgentAct(nn.Module):
    """``agent.act`` as a module, for agents whose actor network is not itself the policy (traced, not scripted)."""

    def __init__(self, agent: Agent):
        super().__init__()
        if isinstance(agent.actor, nn.Module):
            self.actor = agent.actor  # so tracing records its parameters as the module's own
        self._act = agent.act

    def forward(self, obs: Tensor) -> Tensor:
        return self._act(obs)


def policy_module(agent: Agent, obs_dim: int) -> nn.Module:
    """A module mapping normalised observations to the agent's actions.

    The agent's ``export_module()`` if it has one; else its ``actor`` network when that returns
    exactly what ``act`` does (TD3+BC, ASPC, ReBRAC, ...); else ``act`` itself, to be traced
    (a Gaussian actor returning ``(mean, log_std)``, ...).
    """
    own = agent.export_module()
    if own is not None:
        return own
    actor = agent.actor
    if isinstance(actor, nn.Module):
        probe = torch.randn(8, obs_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = actor(probe)
            if isinstance(out, Tensor) and torch.equal(out, agent.act(probe)):
                return copy.deepcopy(actor)
    return _AgentAct(agent)


def _metadata(run: LoadedRun, module: ExportedPolicy) -> dict[str, Any]:
    return {
        "format": "metaconstraint.exported-policy/1",
        "algo": run.config.algo,
        "dataset": run.config.dataset,
        "env_id": run.env.get("env_id"),
        "step": run.step,
        "seed": run.config.seed,
        "obs_dim": int(run.env["obs_dim"]),
        "act_dim": int(run.env["act_dim"]),
        "action_low": module.low.tolist(),
        "action_high": module.high.tolist(),
        "obs_mean": module.mean.tolist(),
        "obs_denominator": module.denom.tolist(),
        "checkpoint": str(run.checkpoint),
    }


def export_onnx(
    run_dir: str | Path, out: str | Path, checkpoint: str | Path | int | None = None, check: bool = True
) -> dict[str, Any]:
    """Write the run's policy as ONNX (extra ``onnx``: the ``onnx`` and ``onnxscript`` packages): input
    ``obs`` of shape ``(batch, obs_dim)`` float32 (raw observations), output ``action`` ``(batch, act_dim)``;
    normalisation and clip built in, metadata in the model's ``metaconstraint`` property. With ``check`` and
    ``onnxruntime`` installed, the file is run and must give the agent's actions."""
    import contextlib
    import logging

    try:
        import onnx
    except ImportError as err:
        raise RunError("--format onnx needs the onnx and onnxscript packages: pip install -e '.[onnx]'") from err
    run = load_run(run_dir, checkpoint, device="cpu")
    module = _build(run)
    obs_dim = int(run.env["obs_dim"])
    meta = {**_metadata(run, module), "format": "metaconstraint.exported-policy-onnx/1"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (torch.randn(4, obs_dim),), dynamo=True, input_names=["obs"],
                                        output_names=["action"], dynamic_shapes={"obs": {0: torch.export.Dim("batch")}},
                                        verbose=False)
        model = program.model_proto
        onnx.helper.set_model_props(model, {"metaconstraint": json.dumps(meta)})
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    except RunError:
        raise
    except Exception as err:
        raise RunError(f"ONNX export of the {run.config.algo} policy failed: {type(err).__name__}: {err}") from err
    finally:
        quiet.setLevel(level)
        if tmp.exists():
            tmp.unlink()
    if check:
        try:
            import onnxruntime
        except ImportError:
            return meta  # nothing to run it with here
        sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        obs = run.normalizer.denormalize(torch.randn(64, obs_dim).numpy()).astype(np.float32)
        got = torch.as_tensor(sess.run(None, {"obs": obs})[0])
        with torch.no_grad():
            want = module(torch.as_tensor(obs))
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
            raise RunError(f"the ONNX policy in {out} disagrees with the agent (max diff {(got - want).abs().max():.3g})")
    return meta


def _build(run: LoadedRun) -> ExportedPolicy:
    norm, env = run.normalizer, run.env
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).clone()
    denom = torch.as_tensor(norm.std + norm.eps, dtype=torch.float32).clone()
    if env.get("action_low") is not None:
        low = torch.tensor(env["action_low"], dtype=torch.float32)
        high = torch.tensor(env["action_high"], dtype=torch.float32)
    else:
        low = torch.full((int(env["act_dim"]),), -float(env["max_action"]))
        high = -low
    actor = policy_module(run.agent, int(env["obs_dim"])).to("cpu").float().eval().requires_grad_(False)
    return ExportedPolicy(actor, mean, denom, low, high).eval()


def export_policy(
    run_dir: str | Path, out: str | Path, checkpoint: str | Path | int | None = None, check: bool = True,
    format: str = "torchscript",
) -> dict[str, Any]:
    """Write the run's policy (newest or given checkpoint) to ``out`` as TorchScript, or as ONNX with
    ``format="onnx"`` (:func:`export_onnx`).

    With ``check``, the written file is loaded back and must give the agent's actions on
    random observations. Returns the metadata stored in the file.
    """
    if format == "onnx":
        return export_onnx(run_dir, out, checkpoint, check)
    if format != "torchscript":
        raise RunError(f"unknown export format {format!r} (--format): torchscript or onnx")
    run = load_run(run_dir, checkpoint, device="cpu")
    module = _build(run)
    example = torch.randn(4, int(run.env["obs_dim"]))
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch, but it is what plain torch.jit.load reads
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            scripted = torch.jit.script(module)
        except Exception:  # an actor TorchScript cannot compile: trace it (fixed control flow)
            scripted = torch.jit.trace(module, example)
    meta = _metadata(run, module)
    payload = io.BytesIO()
    torch.save({"format": meta["format"], "config": run.config.to_dict(), "env": dict(run.env),
                "module": {k: v.detach().clone() for k, v in module.state_dict().items()}}, payload)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files={"metaconstraint.json": json.dumps(meta),
                                                             PAYLOAD: payload.getvalue()})
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    if check:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(out))
        obs = torch.as_tensor(run.normalizer.denormalize(torch.randn(64, meta["obs_dim"]).numpy()))
        with torch.no_grad():
            want = run.agent.act(run.normalizer(obs)).float()
            want = torch.max(torch.min(want, module.high), module.low)
            got = loaded(obs)
        if not torch.allclose(got, want, atol=1e-6, rtol=1e-5):
            raise RunError(f"the exported policy in {out} disagrees with the agent (max diff {(got - want).abs().max():.3g})")
    return meta


# ----------------------------------------------------------------------------- loading without running the file's code
def _extra(path: Path, name: str) -> bytes | None:
    """An extra file of a TorchScript archive, read as a zip member (no TorchScript is loaded)."""
    try:
        with zipfile.ZipFile(path) as z:
            hits = [n for n in z.namelist() if n.endswith(f"/extra/{name}")]
            return z.read(hits[0]) if hits else None
    except (zipfile.BadZipFile, OSError, KeyError):
        return None


def is_exported_policy(path: str | os.PathLike) -> bool:
    """True for a file written by :func:`export_policy` (one with the plain-data policy inside)."""
    p = Path(path)
    return p.is_file() and zipfile.is_zipfile(p) and _extra(p, PAYLOAD) is not None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``metaconstraint.json`` of an exported policy (algorithm, env id, step, normalisation, ...)."""
    raw = _extra(Path(path), "metaconstraint.json")
    if raw is None:
        raise RunError(f"'{path}' is not a policy written by metaconstraint export (no metaconstraint.json inside)")
    try:
        meta = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise RunError(f"'{path}': its metaconstraint.json is damaged: {err}") from err
    if not isinstance(meta, dict):
        raise RunError(f"'{path}': its metaconstraint.json is not a mapping")
    return meta


class LoadedPolicy:
    """An exported policy as a callable: raw observations in (numpy or tensor, one or a batch), actions out
    (numpy for numpy input, a tensor for tensor input). ``module`` is the :class:`ExportedPolicy`, ``meta`` the
    file's metadata, ``env_id`` its env."""

    def __init__(self, module: ExportedPolicy, meta: dict[str, Any]):
        self.module = module.eval().requires_grad_(False)
        self.meta = meta
        self.env_id = meta.get("env_id")

    @torch.no_grad()
    def __call__(self, obs: Any) -> Any:
        if isinstance(obs, Tensor):
            return self.module(obs)
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        return self.module(x).numpy()


def load_policy(path: str | os.PathLike, device: str = "cpu") -> LoadedPolicy:
    """The policy in a file written by :func:`export_policy`, rebuilt from the plain data stored in it
    (``torch.load(weights_only=True)``; the file's TorchScript code is not loaded), as a callable that
    takes numpy arrays or tensors."""
    from . import algos
    from .config import run_config_from_dict

    path = Path(path)
    if not path.is_file():
        raise RunError(f"exported policy '{path}' does not exist")
    raw = _extra(path, PAYLOAD)
    if raw is None:
        raise RunError(
            f"'{path}' is not a policy written by this version of metaconstraint export (no {PAYLOAD} inside); "
            "export it again with metaconstraint export --run-dir RUN --out FILE"
        )
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        config = run_config_from_dict(data["config"])
        env = data["env"]
        agent = algos.make(config.algo, int(env["obs_dim"]), int(env["act_dim"]), float(env["max_action"]),
                           device="cpu", config=copy.deepcopy(config.agent))
        act_dim = int(env["act_dim"])
        module = ExportedPolicy(policy_module(agent, int(env["obs_dim"])).float(), torch.zeros(int(env["obs_dim"])),
                                torch.ones(int(env["obs_dim"])), torch.zeros(act_dim), torch.zeros(act_dim))
        module.load_state_dict(data["module"])
    except RunError:
        raise
    except Exception as err:  # damaged or foreign content: one message, not a traceback
        raise RunError(f"cannot rebuild the policy in '{path}': {type(err).__name__}: {err}") from err
    return LoadedPolicy(module.to(device), read_metadata(path))
