"""Environment specs read from files are checked before anything builds them.

A Gymnasium ``EnvSpec`` names code: ``gym.make(spec)`` imports and calls ``spec.entry_point``
(and each ``additional_wrappers`` entry point) with ``spec.kwargs``, and an env id of the form
``"module:Env-v0"`` imports ``module``. A dataset's ``metadata.json``, an HDF5/npz ``env_id``
attribute or a checkpoint's stored spec is therefore never built as it is. It is accepted only when

* its id is registered by an installed package (``gymnasium.registry``) with the same entry point
  (and, if given, the same vector entry point), or
* its entry point lies in a trusted module (:data:`TRUSTED_MODULES`) and names an ``Env`` class
  (a ``Wrapper`` class for wrappers), so no other function of such a package can be named;

anything else raises :class:`UntrustedEnvSpec`, naming the entry point, unless the caller passes
``trust=True`` (``--trust-env-spec`` on the command line).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from .validate import DataError

__all__ = ["TRUSTED_MODULES", "UntrustedEnvSpec", "check_env_id", "check_env_spec", "env_spec_from_json"]

# Packages whose Env / Wrapper classes may be named by an entry point read from a file.
TRUSTED_MODULES = ("gymnasium", "gymnasium_robotics", "ale_py", "shimmy", "minigrid", "miniworld")

_HOW = "pass --trust-env-spec (trust_env_spec=True) only if you trust the file, or give the env id yourself (env_id=)"


class UntrustedEnvSpec(DataError):
    """An env spec or env id read from a file names code outside the trusted packages."""


def _trusted_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in TRUSTED_MODULES)


def _is_trusted_class(entry_point: Any, base: type) -> bool:
    """``module:Class`` with ``module`` in a trusted package and ``Class`` a subclass of ``base``."""
    if not isinstance(entry_point, str) or entry_point.count(":") != 1:
        return False
    module, _, attr = entry_point.partition(":")
    if not _trusted_module(module):
        return False
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and issubclass(obj, base)


def _refuse(what: str, entry_point: Any, where: str) -> UntrustedEnvSpec:
    return UntrustedEnvSpec(
        f"{where}: refusing to build its environment: {what} {entry_point!r} is neither registered by an installed "
        f"package nor an Env class of a trusted package ({', '.join(TRUSTED_MODULES)}), and building it could run "
        f"code from the file; {_HOW}"
    )


def check_env_id(env_id: str | None, where: str, trust: bool = False) -> str | None:
    """``env_id`` unchanged, unless it is ``"module:Env-v0"`` with ``module`` outside the trusted packages."""
    if env_id is None or trust or ":" not in str(env_id):
        return env_id
    module = str(env_id).split(":", 1)[0]
    if not _trusted_module(module):
        raise UntrustedEnvSpec(
            f"{where}: refusing env id {env_id!r}: making it would import module {module!r}, which is not a "
            f"trusted package ({', '.join(TRUSTED_MODULES)}); {_HOW}"
        )
    return env_id


def check_env_spec(spec: EnvSpec, where: str, trust: bool = False) -> EnvSpec:
    """``spec`` unchanged if building it runs only installed, trusted environment code (module docstring)."""
    if trust:
        return spec
    check_env_id(spec.id, where)
    registered = gym.registry.get(spec.id)
    if registered is not None and registered.entry_point == spec.entry_point:
        pass
    elif not _is_trusted_class(spec.entry_point, gym.Env):
        raise _refuse("entry point", spec.entry_point, where)
    vec = getattr(spec, "vector_entry_point", None)
    if vec is not None and not (registered is not None and registered.vector_entry_point == vec) and not _is_trusted_class(vec, gym.vector.VectorEnv):
        raise _refuse("vector entry point", vec, where)
    for wrapper in getattr(spec, "additional_wrappers", ()) or ():
        if not _is_trusted_class(wrapper.entry_point, gym.Wrapper):
            raise _refuse(f"wrapper {wrapper.name!r} entry point", wrapper.entry_point, where)
    return spec


def env_spec_from_json(text: str | None, where: str, trust: bool = False) -> EnvSpec | None:
    """A checked ``EnvSpec`` from its JSON (``None`` for no text or a spec Gymnasium cannot parse)."""
    if not text:
        return None
    for old in ('"order_enforce": true,', '"apply_api_compatibility": false,', '"autoreset": false, '):
        text = text.replace(old, "")  # fields older Minari files carry that gymnasium 1.x rejects
    try:
        spec = EnvSpec.from_json(text)  # parses only; imports nothing
    except Exception:
        return None
    return check_env_spec(spec, where, trust)
