"""Files are hostile: an env spec or env id read from a dataset or a checkpoint never runs code.

Every test plants a command that would create a marker file and asserts that the file never appears;
one test shows, with the explicit trust flag, that the planted spec really does run its command.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from metaconstraint import cli
from metaconstraint.data import load
from metaconstraint.data.builtin import builtin_path
from metaconstraint.data.envspec import UntrustedEnvSpec, check_env_spec, env_spec_from_json
from metaconstraint.rundir import latest_checkpoint, load_checkpoint, save_checkpoint
from tests.test_cli import main, tiny_train_args
from tests.test_training import write_tiny_npz

PENDULUM = "gymnasium.envs.classic_control.pendulum:PendulumEnv"


def evil_spec(marker: Path, **changes) -> str:
    """Pendulum's spec with its entry point replaced by ``os:system`` running ``touch marker``."""
    spec = {
        "id": "Pendulum-v1", "entry_point": "os:system", "reward_threshold": None, "nondeterministic": False,
        "max_episode_steps": 200, "order_enforce": True, "disable_env_checker": False,
        "kwargs": {"command": f"touch {marker}"}, "additional_wrappers": [], "vector_entry_point": None,
    }
    spec.update(changes)
    return json.dumps(spec)


def evil_minari_folder(tmp_path: Path, spec_json: str) -> Path:
    folder = tmp_path / "evil-v0"
    shutil.copytree(builtin_path("pendulum-medium"), folder)
    meta_path = folder / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["env_spec"] = meta["eval_env_spec"] = spec_json
    meta_path.write_text(json.dumps(meta))
    return folder


def test_a_minari_datasets_env_spec_cannot_run_code_on_train(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    folder = evil_minari_folder(tmp_path, evil_spec(marker))
    code, _, err = main(["train", "--dataset", folder, "--steps", 10, "--run-dir", tmp_path / "run", "--quiet"], capsys)
    assert code == 2
    assert "refusing to build its environment: entry point 'os:system'" in err and "metadata.json" in err, err
    assert "--trust-env-spec" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(UntrustedEnvSpec, match="os:system"):
        load(folder)
    assert not marker.exists()
    # The file really is malicious: with the explicit trust flag its command runs.
    load(folder, trust_env_spec=True)
    assert marker.exists()


def test_a_checkpoints_env_spec_cannot_run_code_on_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    data = write_tiny_npz(tmp_path / "tiny.npz", episodes=2)
    run_dir = tmp_path / "run"
    assert cli.main([str(a) for a in tiny_train_args(data, run_dir, steps=50)]) == 0
    capsys.readouterr()
    ckpt = latest_checkpoint(run_dir)
    state = load_checkpoint(ckpt)
    state["env"]["env_spec_json"] = evil_spec(marker)
    save_checkpoint(state, ckpt)  # an attacker can recompute the checksum: it guards against damage, not tampering
    code, _, err = main(["eval", "--run-dir", run_dir, "--episodes", 1], capsys)
    assert code == 2
    assert "refusing to build its environment: entry point 'os:system'" in err and str(ckpt) in err, err
    assert not marker.exists()
    # A stored env id of the form module:Env imports the module: refused too.
    state["env"]["env_spec_json"] = None
    state["env"]["env_id"] = "evil_module_xyz:Pendulum-v1"
    save_checkpoint(state, ckpt)
    code, _, err = main(["eval", "--run-dir", run_dir, "--episodes", 1], capsys)
    assert code == 2 and "refusing env id 'evil_module_xyz:Pendulum-v1'" in err, err


def test_an_env_id_attribute_cannot_import_a_module(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "plantedmod.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_tiny_npz(tmp_path / "tiny.npz", episodes=1)
    arrays = dict(np.load(path))
    arrays["env_id"] = np.array("plantedmod:Pendulum-v1")
    np.savez(path, **arrays)
    with pytest.raises(UntrustedEnvSpec, match="refusing env id 'plantedmod:Pendulum-v1'"):
        load(path)
    assert not marker.exists() and "plantedmod" not in sys.modules


@pytest.mark.parametrize(
    "changes, named",
    [
        # a wrapper applied by gym.make is code too
        ({"entry_point": PENDULUM, "additional_wrappers": [{"name": "w", "entry_point": "os:system", "kwargs": {}}]},
         "wrapper 'w' entry point 'os:system'"),
        # a trusted package, but a function rather than an Env class
        ({"entry_point": "gymnasium.envs.registration:make", "kwargs": {"id": "plantedmod:X-v0"}},
         "entry point 'gymnasium.envs.registration:make'"),
        # an id no installed package registers, with code outside the trusted packages
        ({"id": "Evil-v0", "entry_point": "subprocess:call"}, "entry point 'subprocess:call'"),
    ],
)
def test_wrappers_functions_and_unregistered_entry_points_are_refused(tmp_path, changes, named):
    with pytest.raises(UntrustedEnvSpec, match=named.replace("(", r"\(")):
        env_spec_from_json(evil_spec(tmp_path / "MARKER", **changes), "test file")
    assert not (tmp_path / "MARKER").exists()


def test_registered_and_trusted_specs_are_accepted():
    import gymnasium as gym

    spec = env_spec_from_json(json.dumps({**json.loads(evil_spec(Path("x"))), "entry_point": PENDULUM, "kwargs": {}}), "f")
    assert spec.id == "Pendulum-v1" and gym.make(spec).observation_space.shape == (3,)
    assert check_env_spec(gym.spec("Hopper-v5"), "f") is not None
    assert load("pendulum-medium").env_spec.entry_point == PENDULUM
