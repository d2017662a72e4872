"""The run configuration: presets, YAML files, ``--set key=value`` overrides, validation.

A run is described by one :class:`RunConfig` (the trainer's settings) whose ``agent`` field
holds the algorithm's own config dataclass. Values come in layers, later ones winning:

1. the preset (``quick``: sized for the built-in Pendulum data on a laptop; ``paper``: the
   algorithm's published sizes, 1M steps),
2. the algorithm's published per-dataset settings (``algo_preset``, when it has any),
3. a YAML file (``--config``; a run's ``config.yaml`` is such a file),
4. command-line flags (``--steps``, ``--seed``, ...),
5. ``--set key=value`` (``key`` is a run setting, ``agent.<field>``, or a bare algorithm field).

Every value is checked against the dataclass field's type, and every key against the known
ones, so a typo stops the run before any data is loaded. A nested block of the algorithm's
config (the ``constraint`` settings of ``aspc`` and the ``*-adaptive`` algorithms) is a mapping
in YAML and a dotted key elsewhere (``--set constraint.lr=0.04``). A setting given by a name it
had before a rename (:data:`RENAMED_AGENT_SETTINGS`) loads under its new name with a
:class:`RenamedSettingWarning`, so old configs, sweep specs and checkpoints keep working.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

__all__ = [
    "ConfigError",
    "PRESETS",
    "RENAMED_AGENT_SETTINGS",
    "RenamedSettingWarning",
    "RunConfig",
    "algo_class",
    "coefficient_name",
    "dotted_keys",
    "dump_yaml",
    "is_agent_setting",
    "load_yaml",
    "parse_overrides",
    "preset_reason",
    "renamed_agent_setting",
    "resolve",
    "run_config_from_dict",
]

# Settings the trainer derives from the run itself; setting them by hand is refused.
DERIVED_AGENT_FIELDS = {"seed": "--seed", "planned_steps": "--steps"}

PRESETS: dict[str, dict[str, Any]] = {
    # Sized to finish in a few minutes on 2 CPU cores on the built-in Pendulum data
    # (measured; see the README). Everything except the network widths (actor, critic, value
    # net, VAE; each algorithm takes the ones it has) is ASPC's single
    # configuration.
    "quick": {
        "steps": 12_000,
        "batch_size": 256,
        "eval_every": 1_200,
        "eval_episodes": 10,
        "log_every": 100,
        "checkpoint_every": 4_000,
        "agent": {"actor_hidden": (64, 64), "critic_width": 64, "value_hidden": (64, 64), "vae_hidden": (64, 64)},
    },
    # The papers' sizes: 1M gradient steps, the algorithm's own networks and batch size.
    "paper": {
        "steps": 1_000_000,
        "batch_size": None,  # the algorithm's (``cls.batch_size``), else 256
        "eval_every": 5_000,
        "eval_episodes": 10,
        "log_every": 1_000,
        "checkpoint_every": 50_000,
        "agent": {},
    },
}


class ConfigError(ValueError):
    """A bad configuration value or key; the message says what to change."""


class RenamedSettingWarning(FutureWarning):
    """A setting was given by its old name; it loads under the new one, which the message names."""


# Old name -> current name of the settings of a learned coefficient. ASPC spelled them alpha_*, the
# *-adaptive algorithms coef_*, and both had terms, delta_q, ... at the top of the agent's config; all
# now live in its ``constraint`` block under ConstraintSettings' names. Applies to the algorithms that
# have that block (others never had these settings).
RENAMED_AGENT_SETTINGS: dict[str, str] = {
    "alpha_lr": "constraint.lr",
    "coef_lr": "constraint.lr",
    "alpha_every": "constraint.every",
    "coef_every": "constraint.every",
    "alpha_lr_decay_to": "constraint.lr_decay_to",
    "coef_lr_decay_to": "constraint.lr_decay_to",
    **{k: f"constraint.{k}" for k in ("terms", "delta_q", "ema_decay", "horizon", "method")},
}


@dataclass
class RunConfig:
    """Everything that defines a training run (saved as ``config.yaml`` in the run directory)."""

    algo: str = "aspc"
    dataset: str = "pendulum-medium"  # built-in name, Minari id or folder, .hdf5/.npz file
    preset: str = "quick"  # quick | paper (the base the other values override)
    algo_preset: str = "auto"  # the algorithm's published per-dataset settings: auto | none | a key
    steps: int = 12_000  # gradient steps
    batch_size: int = 256
    eval_every: int = 1_200  # gradient steps between evaluations (0: only at the end)
    eval_episodes: int = 10
    eval_seed: int | None = None  # None: 1_000_000 + seed (the same start states at every evaluation)
    seed: int = 0
    device: str = "cpu"
    log_every: int = 100  # gradient steps per metrics row (means over the interval)
    checkpoint_every: int = 4_000  # 0: only at the end (and on interrupt)
    keep_checkpoints: int = 3
    reward_scale: str | float = "none"  # none | locomotion | antmaze | a number
    normalize_obs: bool = True
    tag: str = ""  # a free label; report and plot keep runs with different tags apart (ablations)
    # Your own data: the evaluation env when the dataset does not name one (or to override it), and the
    # returns that score 0 and 100 when it carries no reference scores (both or neither).
    env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    # The build of the data the run must train on: its content sha256 (`data info`), or a prefix of it of at
    # least 8 hex digits. Another build (e.g. TD3-made data rebuilt on another CPU) stops the run before step 1.
    dataset_sha256: str | None = None
    agent: Any = None  # the algorithm's config dataclass

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-able, tuples as lists)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "agent"}
        out["agent"] = _plain(dataclasses.asdict(self.agent)) if self.agent is not None else None
        return out

    def resolved_eval_seed(self) -> int:
        return 1_000_000 + self.seed if self.eval_seed is None else self.eval_seed


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------- algorithms
def algo_class(name: str) -> type:
    """The agent class registered under ``name`` (a readable error otherwise)."""
    from .algos import ALGORITHMS

    if name not in ALGORITHMS:
        close = difflib.get_close_matches(name, ALGORITHMS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown algorithm '{name}'{hint}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def coefficient_name(algo: str) -> str:
    """The log key of the algorithm's constraint coefficient (``alpha`` for ASPC / TD3+BC)."""
    return algo_class(algo).coefficient_name


def dataset_key(dataset: str) -> str:
    """``hopper-medium`` for ``hopper-medium-v2``, ``.../hopper_medium-v2.hdf5`` or ``mujoco/hopper/medium-v0``."""
    text = str(dataset).rstrip("/")
    for suffix in (".hdf5", ".h5", ".npz"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    parts = [p for p in re.split(r"[/\\]", text) if p]
    if len(parts) >= 2 and not Path(text).exists():
        text = "-".join(parts[-2:])  # a Minari id: family/kind
    else:
        text = parts[-1] if parts else text
    text = re.sub(r"[-_]v\d+$", "", text.lower()).replace("_", "-")
    return text


def _agent_fields(cls: type) -> dict[str, Any]:
    """Setting name -> resolved type of an algorithm config dataclass; a nested dataclass field
    (``constraint``) gives one dotted name per field of its own (``constraint.lr``)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, Any)
        if dataclasses.is_dataclass(tp):
            out.update({f"{f.name}.{k}": v for k, v in _agent_fields(tp).items()})
        else:
            out[f.name] = tp
    return out


_cached_agent_fields = functools.lru_cache(maxsize=None)(_agent_fields)


def _known_agent_fields(algo: str) -> dict[str, Any] | None:
    from .algos import ALGORITHMS

    cls = ALGORITHMS.get(algo)
    return None if cls is None else _cached_agent_fields(cls.Config)


def _renamed(name: str, agent_types: Mapping[str, Any]) -> str | None:
    new = RENAMED_AGENT_SETTINGS.get(name)
    return new if new is not None and name not in agent_types and new in agent_types else None


def renamed_agent_setting(algo: str, name: str) -> str | None:
    """The current name of ``algo``'s setting ``name`` when that is a name from before a rename
    (:data:`RENAMED_AGENT_SETTINGS`), else None (also for an algorithm this package does not know)."""
    fields = _known_agent_fields(algo)
    return None if fields is None else _renamed(name, fields)


def is_agent_setting(algo: str, name: str) -> bool:
    """Whether ``name`` (no ``agent.`` prefix) names a setting of ``algo``'s config: a field, a
    dotted field of a nested block (``constraint.lr``), the block itself, or an old name of one."""
    fields = _known_agent_fields(algo)
    if fields is None:
        return False
    return name in fields or any(k.startswith(f"{name}.") for k in fields) or _renamed(name, fields) is not None


def _use_current_names(layer: dict[str, Any], agent_types: Mapping[str, Any], where: str) -> None:
    """Rename old ``agent.*`` keys of one layer in place (order kept), with one notice per old name."""
    if not any(k.startswith("agent.") and _renamed(k[6:], agent_types) for k in layer):
        return
    items = list(layer.items())
    layer.clear()
    for key, value in items:
        new = _renamed(key[6:], agent_types) if key.startswith("agent.") else None
        if new is not None:
            if f"agent.{new}" in dict(items):
                raise ConfigError(f"{where} gives both {key} and agent.{new}, which is its new name; keep agent.{new}")
            warnings.warn(f"setting {key} is now called agent.{new} (the old name still loads; write the new one)",
                          RenamedSettingWarning)  # one location: printed once per old name
            key = f"agent.{new}"
        layer[key] = value


def _nest(values: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Flat agent settings (``constraint.lr``) as the config's constructor arguments (a nested dataclass)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    blocks: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        parent, dot, sub = key.partition(".")
        if dot:
            blocks.setdefault(parent, {})[sub] = value
        else:
            out[key] = value
    for parent, sub in blocks.items():
        out[parent] = hints[parent](**_nest(sub, hints[parent]))
    return out


_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"agent"}


def _run_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RunConfig)
    return {k: hints[k] for k in _RUN_FIELDS}


# ----------------------------------------------------------------------------- value parsing
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of integers (e.g. 64,64 or [64, 64])"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` (from YAML or a command line) as type ``tp``, or a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        # numbers before strings, so reward_scale=2 is a number
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, a, where)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{where} takes {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        items = value
        if isinstance(value, str):
            items = [v for v in re.split(r"[,\s]+", value.strip("[]() ")) if v]
        if isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} takes {_type_name(tp)}, got {value!r}")
        (elem, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(items))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where} takes true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} takes an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.replace("_", "")
            try:
                return int(text)
            except ValueError:
                try:
                    f = float(text)  # 1e6
                except ValueError:
                    f = None
                if f is not None and f.is_integer():
                    return int(f)
        raise ConfigError(f"{where} takes an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} takes a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} takes a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} takes a string, got {value!r}")
    return value


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["steps=100", "agent.alpha=3"]`` -> ``{"steps": "100", "agent.alpha": "3"}`` (values still text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. --set agent.constraint.every=5), got {item!r}")
        out[key] = value.strip()
    return out


def _yaml_scalar(text: str) -> Any:
    """A command-line value as YAML would read it (``3`` -> 3, ``[64, 64]`` -> list, ``abc`` -> 'abc')."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


# ----------------------------------------------------------------------------- files
def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict (a missing file or bad YAML is a ConfigError)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file '{p}' is not a text (YAML) file: byte {err.start} is not UTF-8") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file '{p}': {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{p}' is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of settings, not {type(data).__name__}")
    return data


class _Dumper(yaml.SafeDumper):
    """Safe YAML with every mapping in block style (a nested block reads like the agent section); lists stay inline."""


_Dumper.add_representer(dict, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=False))


def dump_yaml(config: RunConfig, path: str | Path | None = None) -> str:
    """The fully resolved config as YAML (written to ``path`` when given)."""
    header = (
        "# metaconstraint run config (fully resolved). Re-run with: metaconstraint train --config THIS_FILE\n"
        "# agent.seed and agent.planned_steps follow seed and steps.\n"
    )
    text = header + yaml.dump(config.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=None)
    if path is not None:
        Path(path).write_text(text)
    return text


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"agent": {"alpha": 3, "constraint": {"lr": 0.1}}}`` -> ``{"agent.alpha": 3, "agent.constraint.lr": 0.1}``
    (only the agent section nests)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "agent":
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: 'agent' must be a mapping of the algorithm's settings")
            out.update({f"agent.{k}": v for k, v in dotted_keys(value).items()})
        else:
            out[str(key)] = value
    return out


def dotted_keys(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"alpha": 3, "constraint": {"lr": 0.1}}`` -> ``{"alpha": 3, "constraint.lr": 0.1}``: nested blocks as
    the dotted keys that ``--set``, sweep specs and report labels use."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out.update(dotted_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------- resolving
def _default_preset(dataset: str) -> str:
    from .data import BUILTIN

    return "quick" if dataset in BUILTIN else "paper"


def _pick(layers: Sequence[tuple[str, dict[str, Any]]], key: str, default: Any) -> tuple[Any, str]:
    for where, layer in reversed(layers):
        if key in layer:
            return layer[key], where
    return default, "default"


def resolve(
    *,
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Build and validate a :class:`RunConfig` from the layers in the module docstring.

    ``file``: a YAML path; ``data``: an already loaded mapping (instead of ``file``);
    ``flags``: command-line values that were given (``None`` values are ignored);
    ``sets``: ``key=value`` strings.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        layers.append((f"config file {file}", _flatten(load_yaml(file), f"config file {file}")))
    if data is not None:
        layers.append(("config", _flatten(data, "config")))
    if flags:
        layers.append(("command line", {k: v for k, v in flags.items() if v is not None}))
    set_layer = {k: _yaml_scalar(v) for k, v in parse_overrides(sets).items()}
    layers.append(("--set", set_layer))

    run_types = _run_types()
    algo_raw, where = _pick(layers, "algo", RunConfig.algo)
    algo = _coerce(algo_raw, str, f"algo ({where})")
    cls = algo_class(algo)
    agent_types = _agent_fields(cls.Config)

    # Bare algorithm keys in --set (e.g. constraint.every=5) mean agent.<key> when unambiguous.
    for key in list(set_layer):
        if key not in run_types and not key.startswith("agent.") and (key in agent_types or _renamed(key, agent_types)):
            set_layer[f"agent.{key}"] = set_layer.pop(key)
    for where, layer in layers:
        _use_current_names(layer, agent_types, where)

    # Unknown keys: stop with the closest known names.
    known = set(run_types) | {f"agent.{k}" for k in agent_types}
    for where, layer in layers:
        for key in layer:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known) + sorted(agent_types), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"unknown setting '{key}' ({where}){hint}. Run settings: {', '.join(sorted(run_types))}; "
                    f"{algo} settings (as agent.<name>): {', '.join(sorted(agent_types))}"
                )
    for key in set_layer:
        if key.startswith("agent.") and key[6:] in DERIVED_AGENT_FIELDS:
            raise ConfigError(f"{key} follows the run's {DERIVED_AGENT_FIELDS[key[6:]]}; set that instead")

    dataset_raw, where = _pick(layers, "dataset", RunConfig.dataset)
    dataset = _coerce(dataset_raw, str, f"dataset ({where})")
    preset_raw, where = _pick(layers, "preset", None)
    preset_from = "default" if preset_raw is None else where
    preset = _default_preset(dataset) if preset_raw is None else _coerce(preset_raw, str, f"preset ({where})")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' ({where}); choose one of: {', '.join(PRESETS)}")
    base = dict(PRESETS[preset])
    agent_base = {k: v for k, v in base.pop("agent").items() if k in agent_types}
    if base.get("batch_size") is None:
        base["batch_size"] = int(cls.batch_size)

    # The algorithm's per-dataset settings (published tuning), below the user's layers.
    algo_presets: Mapping[str, Mapping[str, Any]] = cls.presets
    ap_raw, where = _pick(layers, "algo_preset", "auto")
    ap = _coerce(ap_raw, str, f"algo_preset ({where})")
    if ap == "auto":
        ap = dataset_key(dataset) if dataset_key(dataset) in algo_presets else "none"
    elif ap != "none" and ap not in algo_presets:
        raise ConfigError(
            f"algo_preset '{ap}' ({where}): {algo} has per-dataset settings for "
            f"{', '.join(sorted(algo_presets)) or 'no dataset'}; use auto or none"
        )
    if ap != "none":
        agent_base.update(algo_presets[ap])

    values: dict[str, Any] = {k: getattr(RunConfig, k) for k in run_types}
    values.update(base)
    values.update(algo=algo, dataset=dataset, preset=preset, algo_preset=ap)
    agent_values: dict[str, Any] = dict(agent_base)
    for where, layer in layers:
        for key, raw in layer.items():
            if key in ("algo", "dataset", "preset", "algo_preset"):
                continue
            if key.startswith("agent."):
                name = key[6:]
                if name in DERIVED_AGENT_FIELDS:
                    continue  # follows the run's seed / steps
                agent_values[name] = _coerce(raw, agent_types[name], f"{key} ({where})")
            else:
                values[key] = _coerce(raw, run_types[key], f"{key} ({where})")

    validate(RunConfig(**values))
    if "seed" in agent_types:
        agent_values["seed"] = values["seed"]
    if "planned_steps" in agent_types:
        agent_values["planned_steps"] = values["steps"]
    check_agent_ranges(agent_values, algo)
    try:
        agent_cfg = cls.Config(**_nest(agent_values, cls.Config))
        if hasattr(agent_cfg, "validate"):
            agent_cfg.validate()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{algo} settings: {err}") from err
    out = RunConfig(**values, agent=agent_cfg)
    out.preset_from = preset_from  # not a setting: what preset_reason() says
    return out


def preset_reason(config: RunConfig) -> str:
    """Which preset a run uses and why, in one phrase (for the first line ``train`` prints)."""
    from .data import BUILTIN

    p = config.preset
    sizes = {"quick": f"{PRESETS['quick']['steps']:,} steps, 64-wide networks",
             "paper": f"{PRESETS['paper']['steps']:,} steps, the algorithm's published network sizes"}.get(p, "")
    where = getattr(config, "preset_from", "default")
    if where != "default":
        why = f"set by {where}"
    elif config.dataset in BUILTIN:
        why = "the default for a built-in dataset"
    else:
        why = ("the default for a dataset that is not built in (a real benchmark run); add --preset quick for "
               f"a short run of {PRESETS['quick']['steps']:,} steps")
    return f"preset {p} ({sizes}): {why}" if sizes else f"preset {p}: {why}"


def _range_rule(name: str) -> tuple[str, Callable[[float], bool]] | None:
    """The range an algorithm setting must lie in, from its name (the same names mean the same
    thing in every algorithm's config): ``(description, test)``, or None for no rule."""
    if name == "lr" or name.endswith("_lr"):
        return "> 0", lambda v: v > 0
    if name.endswith("_decay_to"):
        return "in (0, 1]", lambda v: 0 < v <= 1
    if name.endswith("_decay"):
        return "in [0, 1)", lambda v: 0 <= v < 1
    if name == "every" or name.endswith(("_hidden", "_width", "_depth", "_every", "_freq")) or name.startswith("num_"):
        return "an integer >= 1", lambda v: v >= 1
    return None


def check_agent_ranges(values: Mapping[str, Any], algo: str) -> None:
    """Every numeric algorithm setting finite, and in its range (:func:`_range_rule`); the message names the key."""
    for name, value in values.items():
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if name.endswith("_hidden") and not items:
            raise ConfigError(f"agent.{name} ({algo}) needs at least one layer width, got {value!r}")
        rule = _range_rule(name.rsplit(".", 1)[-1])
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise ConfigError(f"agent.{name} ({algo}) must be a finite number, got {v}")
            if rule is not None and not rule[1](v):
                raise ConfigError(f"agent.{name} ({algo}) must be {rule[0]}, got {value!r}")


def validate(c: RunConfig) -> None:
    """Range checks with messages that say what to do."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(c.steps > 0, f"steps must be a positive number of gradient steps, got {c.steps} (e.g. --steps 10000)")
    need(c.batch_size > 0, f"batch_size must be positive, got {c.batch_size}")
    need(c.eval_every >= 0, f"eval_every must be >= 0 (0: evaluate only at the end), got {c.eval_every}")
    need(c.eval_episodes > 0, f"eval_episodes must be positive, got {c.eval_episodes}")
    need(c.log_every > 0, f"log_every must be positive, got {c.log_every}")
    need(c.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0: only at the end), got {c.checkpoint_every}")
    need(c.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {c.keep_checkpoints}")
    need(c.seed >= 0, f"seed must be >= 0, got {c.seed}")
    need(c.eval_seed is None or c.eval_seed >= 0, f"eval_seed must be >= 0 (or null: 1000000 + seed), got {c.eval_seed}")
    need(
        re.fullmatch(r"cpu|cuda(:\d+)?|mps", c.device) is not None,
        f"device must be cpu, cuda, cuda:N or mps, got '{c.device}'",
    )
    refs = (c.ref_min_score, c.ref_max_score)
    need(
        (refs[0] is None) == (refs[1] is None),
        "ref_min_score and ref_max_score go together (the returns that score 0 and 100): give both "
        "(--ref-min-score and --ref-max-score) or neither",
    )
    if refs[0] is not None:
        need(all(math.isfinite(v) for v in refs), f"reference scores must be finite numbers, got {refs[0]} and {refs[1]}")
        need(refs[0] != refs[1], f"ref_min_score and ref_max_score are both {refs[0]}; no score can be computed from them")
    need(c.env_id is None or c.env_id.strip() != "", "env_id must be a Gymnasium env id (e.g. Hopper-v5), got ''")
    need(
        c.dataset_sha256 is None or re.fullmatch(r"[0-9a-fA-F]{8,64}", c.dataset_sha256) is not None,
        f"dataset_sha256 must be the data's content sha256 or a prefix of it (8 to 64 hex digits, as `metaconstraint "
        f"data info` prints it), got {c.dataset_sha256!r}",
    )
    if isinstance(c.reward_scale, float):
        need(math.isfinite(c.reward_scale), f"reward_scale must be a finite number, got {c.reward_scale}")
    if isinstance(c.reward_scale, str):
        from .data import REWARD_MODES

        need(
            c.reward_scale in REWARD_MODES,
            f"reward_scale must be one of {', '.join(REWARD_MODES)} or a number, got '{c.reward_scale}'",
        )


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A saved ``config.yaml`` (as a dict) back into a :class:`RunConfig`, checked like a new one."""
    return resolve(data=data)
