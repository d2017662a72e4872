"""Plots of one run or several: the constraint coefficient (alpha), losses, normalised score vs step.

Runs are grouped by their full resolved configuration minus the seed (see :func:`settings_key`):
runs whose settings differ are never drawn as one line unless asked (``pool``). A group of
several seeds is drawn as its mean with a +-1 std band over seeds (at the steps all its runs
logged), a single run as a line (its score band is the std over evaluation episodes). A group is
labelled by the algorithm and the settings that differ from the algorithm's defaults
(:func:`variant_labels`). Figures are drawn without pyplot (no display needed) and written as PNG.
"""

from __future__ import annotations

import difflib
import functools
import json
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .config import ConfigError, resolve
from .rundir import RunData, flat_settings, load_run_data

__all__ = [
    "NOT_RESULT", "check_pool", "group_runs", "plot_run", "plot_runs", "resolved_settings", "settings_key", "variant_labels",
]

LOSS_KEYS = (("critic_loss", True), ("actor_loss", False), ("bc_loss", True), ("q_mean", False))
# The adaptive coefficient's terms (logged at every coefficient update), drawn in terms.png: (key, title, log axis)
TERM_KEYS = (("L1", "L1: loss after the step (coefficient held)", False), ("L2", "L2 = ΔQ²", True),
             ("L3", "L3 = L2·B·ΔB", True), ("delta_q", "ΔQ: change of the value over the step", False),
             ("B", "B: largest constraint before the step", True), ("delta_B", "ΔB: its largest change", True),
             ("outer_loss", "outer loss L1 + L2 + L3 (the terms used)", False),
             ("hypergrad", "hypergradient d(outer)/dρ", False))
GREEK = {"alpha": "α", "beta": "β", "beta1": "β₁", "lambda": "λ"}


# ----------------------------------------------------------------------------- grouping by configuration
# Settings that do not split groups: seeds (what a group averages over); the device and how often the
# trainer logs and checkpoints (they do not change what a run computes: a run resumed from any
# checkpoint ends bit for bit where a straight one does); and the names of the presets, whose values
# (steps, network sizes, an algorithm's per-dataset coefficients) are in config.yaml and compared
# one by one. Everything else in config.yaml splits groups.
NOT_RESULT = ("seed", "agent.seed", "eval_seed", "device", "log_every", "checkpoint_every", "keep_checkpoints",
              "preset", "algo_preset", "dataset_sha256")
# Never shown in a label: the row/column itself, and a value that follows another setting.
_NOT_LABELLED = ("algo", "dataset", "tag", "agent.planned_steps")


def resolved_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`flat_settings` with every setting the run's config.yaml lacks filled in with its algorithm's
    current default. A config written before a setting existed (ASPC's ``horizon``, ``method`` or
    ``outer_batch``, a run's ``env_id``) lacks its key; every new setting is added with a default that
    reproduces the old behaviour, so the old run behaved as the default says and groups with new runs
    that use the default. An algorithm this package does not know is left as it is."""
    flat = flat_settings(config)
    preset = flat.get("preset")
    defaults = _defaults(str(flat.get("algo")), str(flat.get("dataset")), preset if isinstance(preset, str) else None)
    for key, value in (defaults or {}).items():
        flat.setdefault(key, value)
    return flat


def _pooled(key: str, pool: Sequence[str]) -> bool:
    return key in pool or (key.startswith("agent.") and key[6:] in pool)


def settings_key(config: Mapping[str, Any], pool: Sequence[str] = ()) -> str:
    """What runs must share to be averaged together: every setting except the dataset (a report's
    row), those in :data:`NOT_RESULT` and those named in ``pool`` (``alpha`` or ``agent.alpha``)."""
    kept = {k: v for k, v in resolved_settings(config).items()
            if k != "dataset" and k not in NOT_RESULT and not _pooled(k, pool)}
    return json.dumps(kept, sort_keys=True, default=str)


def format_value(value: Any) -> str:
    """A setting's value as a label shows it (``[64, 64]`` -> ``64,64``; floats in their shortest exact form)."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if value == "":
        return "''"
    return repr(value) if isinstance(value, float) else str(value)


@functools.lru_cache(maxsize=256)
def _defaults(algo: str, dataset: str, preset: str | None) -> dict[str, Any] | None:
    """The algorithm's defaults for a run: the flat settings ``metaconstraint train --algo ALGO --dataset
    DATASET --preset PRESET`` would use (None for an algorithm this package does not know)."""
    try:
        return flat_settings(resolve(flags={"algo": algo, "dataset": dataset, "preset": preset}).to_dict())
    except (ConfigError, ImportError, TypeError, ValueError):
        return None


def _non_default(config: Mapping[str, Any], pool: Sequence[str]) -> dict[str, Any] | None:
    """The settings of ``config`` that differ from its algorithm's defaults, by display name (None: unknown algorithm)."""
    flat = resolved_settings(config)
    preset = flat.get("preset")
    defaults = _defaults(str(flat.get("algo")), str(flat.get("dataset")), preset if isinstance(preset, str) else None)
    if defaults is None:
        return None
    run_keys = {k for k in flat if not k.startswith("agent.")}
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in NOT_RESULT or key in _NOT_LABELLED or _pooled(key, pool) or key not in defaults:
            continue
        if defaults[key] != value:
            name = key[6:] if key.startswith("agent.") and key[6:] not in run_keys else key
            out[name] = value
    return out


def variant_labels(configs: Iterable[Mapping[str, Any]], pool: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, Any]]:
    """Labels for the groups among ``configs`` (by :func:`settings_key`), and the non-default settings that
    every group of a known algorithm shares (stated once instead of in every label).

    A label is the algorithm plus its settings that differ from the algorithm's defaults and are not
    shared by all groups: ``aspc [constraint.lr=0.25]``. Groups that would still get the same label (say,
    runs that differ only in ``tag``) also show the settings that tell them apart, so two different
    configurations never share a label.
    """
    reps: dict[str, Mapping[str, Any]] = {}
    for c in configs:
        reps.setdefault(settings_key(c, pool), c)
    diffs = {k: _non_default(c, pool) for k, c in reps.items()}
    as_items = [{(n, json.dumps(v, default=str)) for n, v in d.items()} for d in diffs.values() if d is not None]
    shared = set.intersection(*as_items) if as_items else set()
    common = {n: json.loads(v) for n, v in sorted(shared)}
    labels: dict[str, str] = {}
    for k, c in reps.items():
        parts = {n: v for n, v in (diffs[k] or {}).items() if n not in common}
        labels[k] = _label(str(c.get("algo", "?")), parts)
    by_label: dict[str, list[str]] = {}
    for k, lab in labels.items():
        by_label.setdefault(lab, []).append(k)
    for lab, keys in by_label.items():
        if len(keys) < 2:
            continue
        flats = {k: resolved_settings(reps[k]) for k in keys}
        names = [n for n in dict.fromkeys(n for f in flats.values() for n in f)
                 if n not in NOT_RESULT and n != "dataset" and not _pooled(n, pool)
                 and len({json.dumps(f.get(n), default=str) for f in flats.values()}) > 1]
        for k in keys:
            extra = {n: flats[k].get(n) for n in names if not (n == "tag" and not flats[k].get(n))}
            parts = {**{n: v for n, v in (diffs[k] or {}).items() if n not in common}, **extra}
            labels[k] = _label(str(reps[k].get("algo", "?")), parts)
    return labels, common


def _label(algo: str, parts: Mapping[str, Any]) -> str:
    return f"{algo} [{', '.join(f'{n}={format_value(v)}' for n, v in parts.items())}]" if parts else algo


def describe_settings(settings: Mapping[str, Any]) -> str:
    """``steps=8000, eval_every=2000``."""
    return ", ".join(f"{n}={format_value(v)}" for n, v in settings.items())


def check_pool(runs: Sequence[RunData], pool: Sequence[str]) -> None:
    """A ``pool`` name that no run has is a typo: stop with the closest names."""
    names = {k for r in runs for k in resolved_settings(r.config)} | {k[6:] for r in runs for k in resolved_settings(r.config)
                                                                 if k.startswith("agent.")}
    for name in pool:
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=3)
            raise ValueError(f"--pool {name}: no run has a setting '{name}'"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))


def group_runs(runs: Sequence[RunData], pool: Sequence[str] = ()) -> tuple[dict[str, list[RunData]], dict[str, Any]]:
    """Runs by ``"<variant label> / <dataset>"`` (same settings apart from the seed), and the settings
    every group shares away from the defaults."""
    labels, common = variant_labels((r.config for r in runs), pool)
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        groups.setdefault(f"{labels[settings_key(r.config, pool)]} / {r.dataset}", []).append(r)
    return groups, common


def _aggregate(runs: Sequence[RunData], key: str, start: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and std over runs at the steps every run has (``start``: a value at step 0 to prepend)."""
    series = [r.series(key) for r in runs]
    series = [(s, v) for s, v in series if len(s)]
    if not series:
        return None
    common = set(series[0][0].tolist())
    for s, _ in series[1:]:
        common &= set(s.tolist())
    steps = np.array(sorted(common))
    if len(steps) == 0:
        return None
    vals = np.stack([np.interp(steps, s, v) for s, v in series])  # exact at common steps
    mean, std = vals.mean(0), vals.std(0)
    if start is not None:
        steps, mean, std = np.r_[0.0, steps], np.r_[start, mean], np.r_[0.0, std]
    return steps, mean, std


def _new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (7.0, 4.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _draw(ax: Any, groups: dict[str, list[RunData]], key: str, *, log: bool = False, start: bool = False,
          episode_band: bool = False, colors: dict[str, Any]) -> bool:
    drew = False
    for label, runs in groups.items():
        first = runs[0]
        start_val = None
        if start:
            vals = [r.summary.get("coef_start") for r in runs]
            start_val = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
        agg = _aggregate(runs, key, start_val)
        if agg is None:
            continue
        steps, mean, std = agg
        n = len(runs)
        color = colors[label]
        band = std if n > 1 else None
        if n == 1 and episode_band:
            s_steps, s_std = first.series(key + "_std")
            if len(s_steps) == len(steps):
                band = s_std
        if n > 1:
            name = f"{label} (mean ± std over {n} seeds)"
        else:
            name = f"{label} (seed {first.seed}" + ("; band: ± std over episodes)" if band is not None else ")")
        ax.plot(steps, mean, color=color, label=name, lw=1.6)
        if band is not None:
            ax.fill_between(steps, mean - band, mean + band, color=color, alpha=0.2, lw=0)
        drew = True
    if log and drew:
        ymin = min((r.series(key)[1].min() for rs in groups.values() for r in rs if len(r.series(key)[1])), default=1.0)
        if ymin > 0:
            ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_xlabel("gradient step")
    return drew


def spans_decades(values: Iterable[float], ratio: float = 10.0) -> bool:
    """True when positive values span more than ``ratio`` (then a log axis keeps the small ones readable)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    return bool(v.size) and v.min() > 0 and v.max() / v.min() > ratio


def _coef_label(key: str) -> str:
    return f"{GREEK.get(key, key)} ({key})" if key in GREEK else key


def coefficient_learned(run: RunData) -> bool:
    """True when the run's constraint coefficient moved (a learned one); False for a fixed coefficient or none."""
    lo, hi = run.summary.get("coef_min"), run.summary.get("coef_max")
    if lo is None or hi is None:
        _, v = run.series(run.coef_key)
        if not len(v):
            return False
        lo, hi = float(v.min()), float(v.max())
    # a fixed coefficient logs float32 and float64 copies of one value: not a range
    return not np.isclose(lo, hi, rtol=1e-6, atol=0.0)


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, prefix: str = "", pool: Sequence[str] = ()) -> list[Path]:
    """Draw ``score.png``, ``losses.png``, ``overview.png``, the coefficient's own file (``alpha.png`` for ASPC,
    ``beta.png`` for adaptive IQL, ``coefficient.png`` when runs with different coefficients are drawn
    together; none when every coefficient is fixed) and ``terms.png`` (the adaptive coefficient's L1, L2, L3,
    ΔQ, B, ΔB, outer loss and hypergradient; only when a run logged them) into ``out_dir``.

    Runs with different settings are separate lines; ``pool`` names settings to average over anyway."""
    runs = [load_run_data(p) for p in run_dirs]
    if not runs:
        raise ValueError("no runs to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_pool(runs, pool)
    groups, common = group_runs(runs, pool)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    colors = {label: palette[i % len(palette)] for i, label in enumerate(groups)}
    learned = [r for r in runs if coefficient_learned(r)]
    coef_keys = sorted({r.coef_key for r in learned})
    coef_key = coef_keys[0] if len(coef_keys) == 1 else None
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / f"{prefix}{name}.png"
        fig.tight_layout()
        outside = [a.get_legend() for a in fig.axes if a.get_legend() is not None and not a.get_legend().get_in_layout()]
        if common:  # the settings every line shares away from the defaults, once under the figure
            outside.append(fig.text(0.01, 0.0, textwrap.fill(f"all lines: {describe_settings(common)}", 140),
                                    fontsize=8, va="top"))
        fig.savefig(path, bbox_inches="tight", bbox_extra_artists=outside)  # an outside legend stays in the picture
        written.append(path)

    def coef_panel(ax: Any, legend_outside: bool = False) -> None:
        drew = False
        for key in coef_keys:
            sub = {k: [r for r in v if r.coef_key == key and coefficient_learned(r)] for k, v in groups.items()}
            sub = {k: v for k, v in sub.items() if v}
            drew |= _draw(ax, sub, key, start=True, colors=colors)
        if spans_decades(x for r in learned if r.coef_key in coef_keys for x in r.series(r.coef_key)[1]):
            ax.set_yscale("log")  # e.g. alpha from 0.3 to 12 across datasets
        ax.set_ylabel(_coef_label(coef_key) if coef_key else "constraint coefficient")
        ax.set_title(f"constraint strength {GREEK.get(coef_key, coef_key) if coef_key else ''} vs step")
        if drew and legend_outside and len(groups) > 4:  # many lines: keep the legend off them
            leg = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            leg.set_in_layout(False)  # the axes keep their size; savefig's tight box takes the legend in
        elif drew:
            ax.legend(fontsize=8)

    def score_panel(ax: Any) -> None:
        has_score = any(len(r.series("eval_score")[0]) for r in runs)
        key = "eval_score" if has_score else "eval_return"
        drew = _draw(ax, groups, key, episode_band=True, colors=colors)
        ref_key = "dataset_score" if has_score else "dataset_return"
        refs = {r.dataset: r.summary.get(ref_key) for r in runs if r.summary.get(ref_key) is not None}
        for i, (name, value) in enumerate(sorted(refs.items())):
            ax.axhline(value, color="0.4", ls="--", lw=1,
                       label="dataset's episodes (mean)" if len(refs) == 1 else f"{name} episodes (mean)")
        ax.set_ylabel("normalised score" if has_score else "return (no reference scores)")
        ax.set_title("evaluation: normalised score vs step" if has_score else "evaluation: return vs step")
        if drew:
            for s, v in (r.series(key) for r in runs):
                ax.plot(s, v, ".", color="k", ms=2, alpha=0.25)
            ax.legend(fontsize=8)

    if learned:  # a fixed coefficient is a flat line: no file for it
        fig, axes = _new_figure()
        coef_panel(axes[0][0], legend_outside=True)
        save(fig, coef_key or "coefficient")

    fig, axes = _new_figure()
    score_panel(axes[0][0])
    save(fig, "score")

    fig, axes = _new_figure(2, 2, (6.0, 3.6))
    for ax, (key, log) in zip(axes.flat, LOSS_KEYS):
        if _draw(ax, groups, key, log=log, colors=colors):
            ax.legend(fontsize=7)
        ax.set_title(key + (" (log scale)" if ax.get_yscale() == "log" else ""))
    save(fig, "losses")

    terms = [(k, t, log) for k, t, log in TERM_KEYS if any(len(r.series(k)[0]) for r in runs)]
    if terms:
        ncols = min(4, len(terms))
        nrows = (len(terms) + ncols - 1) // ncols
        fig, axes = _new_figure(ncols, nrows, (4.6, 3.3))
        term_groups = {k: v for k, v in groups.items() if any(len(r.series(t)[0]) for r in v for t, _, _ in terms)}
        for ax, (key, title, log) in zip(axes.flat, terms):
            if _draw(ax, term_groups, key, log=log, colors=colors) and ax is axes.flat[0]:
                ax.legend(fontsize=7)
            ax.set_title(title + (" (log)" if ax.get_yscale() == "log" else ""), fontsize=9)
        for ax in list(axes.flat)[len(terms):]:
            ax.set_visible(False)
        save(fig, "terms")

    fig, axes = _new_figure(3 if learned else 2, 1, (5.2, 3.8))
    score_panel(axes[0][0])
    if learned:
        coef_panel(axes[0][1])
    ax = axes[0][-1]
    if _draw(ax, groups, "q_mean", colors=colors):
        ax.legend(fontsize=8)
    ax.set_title("critic: mean Q(s, π(s))")
    save(fig, "overview")
    return written


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """The plots of one run, into ``run_dir/plots`` by default."""
    run_dir = Path(run_dir)
    return plot_runs([run_dir], out_dir if out_dir is not None else run_dir / "plots")
