"""Turn ``benchmarks/results/*.json`` into markdown tables and the cost-ratio plot.

Writes ``benchmarks/results/TABLE.md`` (one section per device and size: machine, per-update
cost ratio ASPC/TD3+BC by k_alpha, hypergradient backends, the d3rlpy comparison, and the
two targets of issue 8) and ``benchmarks/results/ratio_vs_kalpha-<device>-<size>.png``.
Run by the benchmark session at its end, or by hand: ``python benchmarks/make_table.py``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SIZE_ORDER = {"full": 0, "quick": 1, "tiny": 2}
TARGET_ASPC_RATIO = 1.05  # ASPC at k_alpha = 10 vs TD3+BC, same critic
TARGET_PEER_SPEEDUP = 1.3  # our TD3+BC steps/s vs d3rlpy's


def load(results_dir: Path) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """``{(device type, size): {suite: document}}`` from every result file."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for path in sorted(results_dir.glob("*.json")):
        if path.name.startswith("capture-"):  # bench_capture.py's own format: capture_table
            continue
        doc = json.loads(path.read_text())
        if not {"suite", "size", "machine", "rows"} <= set(doc):
            raise ValueError(f"{path} is not a benchmark result file (needs suite, size, machine, rows)")
        device = doc["machine"]["device"].split(":")[0]
        groups[(device, doc["size"])][doc["suite"]] = doc
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] != "cpu", SIZE_ORDER.get(kv[0][1], 9))))


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if not load else " / ".join(f"{x:.2f}" for x in load)


def machine_lines(docs: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for suite, doc in docs.items():
        m = doc["machine"]
        gpu = ""
        if m.get("gpu_clocks_as_found"):
            c = m["gpu_clocks_as_found"]
            gpu = (
                f", clocks as found: SM {c.get('clocks.sm')} (max {c.get('clocks.max.sm')}), "
                f"memory {c.get('clocks.mem')}, power {c.get('power.draw')}/{c.get('power.limit')}, "
                f"{c.get('temperature.gpu')} C, driver {c.get('driver_version')}, CUDA {m.get('cuda')}"
            )
        lines.append(
            f"- `{suite}`: {m['date']}, {m['device_name']} ({m['cores_available']} of {m['logical_cores']} cores usable, "
            f"{doc.get('threads', m['torch_threads'])} torch thread(s)), torch {m['torch']}, Python {m['python']}"
            + (f", d3rlpy {m['d3rlpy']}" if suite == "peer" and m.get("d3rlpy") else "")
            + f", commit {m.get('git_commit')}; load average (1/5/15 min) at start "
            f"{_fmt_load(doc.get('load_average_at_start'))}, at end {_fmt_load(m.get('load_average_1_5_15'))}{gpu}"
        )
    return lines


def derived_ratio(r1: float, k: int) -> float:
    """ASPC/TD3+BC at k_alpha = k predicted from the ratio at k_alpha = 1.

    Per cycle of k actor steps both agents do 2k critic steps and k actor steps; ASPC's
    differs only in one actor step being second order, a fixed extra ``S - A``. With
    ``r1 = 1 + (S - A)/P`` (P: TD3+BC time per cycle of one actor step), ``r_k = 1 + (r1 - 1)/k``.
    """
    return 1.0 + (r1 - 1.0) / k


def one_step_lookahead(doc: dict[str, Any]) -> dict[str, Any]:
    """The update suite's rows at horizon 1 (results written before horizons existed have none)."""
    return dict(doc, rows=[r for r in doc["rows"] if r.get("horizon", 1) == 1])


def horizon_table(doc: dict[str, Any]) -> list[str]:
    """ASPC/TD3+BC at k_alpha = 10 by lookahead horizon (rows of the same run)."""
    rows = [r for r in doc["rows"] if r["k_alpha"] == 10 and r["critic"] == "robust"]
    horizons = sorted({r.get("horizon", 1) for r in rows})
    if len(horizons) < 2:
        return []
    keyed = {(r["batch_size"], r["width"], r.get("horizon", 1)): r for r in rows}
    lines = ["| batch | width | " + " | ".join(f"horizon {h}" for h in horizons) + " |", "|" + "---|" * (2 + len(horizons))]
    for batch, width in sorted({(r["batch_size"], r["width"]) for r in rows}):
        cells = []
        for h in horizons:
            r = keyed.get((batch, width, h))
            cells.append("" if r is None else f"{r['ratio']:.3f} ({r['paired_ratio']['q1']:.2f}–{r['paired_ratio']['q3']:.2f})")
        lines.append(f"| {batch} | {width} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: ASPC/TD3+BC time per update at k_α = 10, robust critic, α's hypergradient taken through "
              "`horizon` actor steps; median (quartiles) of paired ratios, as above."]
    return lines


def seeds_table(doc: dict[str, Any]) -> list[str]:
    """Seed-updates per second of N vmapped seeds against the same N seeds one after another."""
    lines = ["| algorithm | width | batch | N seeds | vmapped seed-updates/s | sequential | ratio |", "|---|---|---|---|---|---|---|"]
    for r in sorted(doc["rows"], key=lambda r: (r["algo"], r["width"], r["batch_size"], r["seeds"])):
        q = r["ratio_spread"]
        lines.append(
            f"| {r['algo']} | {r['width']} | {r['batch_size']} | {r['seeds']} | {r['vmapped_seed_updates_per_s']:.1f} | "
            f"{r['sequential_seed_updates_per_s']:.1f} | {r['ratio']:.2f} ({q['q1']:.2f}–{q['q3']:.2f}) |"
        )
    lines += ["", "Ratio: sequential time / vmapped time per round (paired, alternating); > 1: the vmapped "
              "ensemble does more seed-updates per second."]
    return lines


def update_table(doc: dict[str, Any]) -> list[str]:
    rows = one_step_lookahead(doc)["rows"]
    ks = sorted({r["k_alpha"] for r in rows})
    keyed = {(r["critic"], r["batch_size"], r["width"], r["k_alpha"]): r for r in rows}
    configs = sorted({(r["critic"], r["batch_size"], r["width"]) for r in rows})
    head = "| critic | batch | width | TD3+BC ms/update | " + " | ".join(f"k_α={k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (4 + len(ks))]
    for critic, batch, width in configs:
        base = [keyed[(critic, batch, width, k)]["td3bc_ms"] for k in ks if (critic, batch, width, k) in keyed]
        cells = []
        for k in ks:
            r = keyed.get((critic, batch, width, k))
            if r is None:
                cells.append("")
                continue
            p = r["paired_ratio"]
            cells.append(f"{r['ratio']:.3f} ({p['q1']:.2f}–{p['q3']:.2f})")
        med_base = sorted(base)[len(base) // 2]
        lines.append(f"| {critic} | {batch} | {width} | {med_base:.2f} | " + " | ".join(cells) + " |")
        r1 = keyed.get((critic, batch, width, 1))
        if r1 is not None:
            derived = [f"{derived_ratio(r1['ratio'], k):.3f}" for k in ks]
            lines.append(f"| ↳ from k_α=1 | | | | " + " | ".join(derived) + " |")
    lines.append("")
    lines.append(
        "Cells: ASPC/TD3+BC time per update, median of the paired ratios of alternating blocks "
        "(in brackets: their quartiles). A block is a whole number of ASPC cycles, so the α update is "
        "counted at its frequency. TD3+BC ms/update: median over the k_α runs."
    )
    lines.append("")
    lines.append(
        "↳ rows: 1 + (r₁ − 1)/k_α from the k_α = 1 ratio r₁. The α update costs a fixed extra "
        "(second-order minus first-order actor step) once per cycle of k_α actor steps, so this is "
        "the same quantity, read off the largest, least load-sensitive signal."
    )
    return lines


def hypergrad_table(doc: dict[str, Any]) -> list[str]:
    rows = doc["rows"]
    out = []
    for (width, batch) in sorted({(r["width"], r["batch_size"]) for r in rows}):
        sub = [r for r in rows if (r["width"], r["batch_size"]) == (width, batch)]
        order = ["first_order", "func", "higher", "jvp", "aspc_step", "affine_step", "implicit_cg", "implicit_neumann"]
        methods = sorted({r["method"] for r in sub}, key=lambda m: order.index(m) if m in order else 99)
        steps = sorted({r["steps"] for r in sub if not r["method"].startswith("implicit_")})
        nparams = sub[0]["actor_params"]
        step_ms = sorted(r["step_ms"] for r in sub)[len(sub) // 2]
        out.append(
            f"Width {width}, batch {batch} ({nparams} actor parameters); one first-order actor step "
            f"≈ {step_ms:.2f} ms. Cells: ms (× first-order step) / peak MiB."
        )
        out.append("")
        out.append("| method | " + " | ".join(f"steps={s}" for s in steps) + " |")
        out.append("|" + "---|" * (1 + len(steps)))
        for m in methods:
            cells = []
            for s in steps:
                r = next((r for r in sub if r["method"] == m and r["steps"] == s), None)
                if m.startswith("implicit_"):
                    r = next((r for r in sub if r["method"] == m), None) if s == steps[0] else None
                if r is None:
                    cells.append("")
                    continue
                mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.2f}"
                cells.append(f"{r['ms']:.2f} (×{r['ratio_to_step']:.2f}) / {mem}")
            label = m
            if m.startswith("implicit_"):
                r = next(r for r in sub if r["method"] == m)
                st = r.get("implicit_settings") or {}
                label = f"{m} ({r['steps']} HVPs, damping {st.get('damping')})"
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(f"Peak memory: {doc['settings'].get('memory')}.")
    return out


def peer_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| loop | width | batch | ours steps/s | d3rlpy steps/s | speedup (paired quartiles) | what-if: fused critic Adam |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(doc["rows"], key=lambda r: (r["loop"], r["width"], r["batch_size"])):
        p = r["paired_speedup"]
        whatif = ""
        if r.get("whatif_fused_critic_adam_steps_per_s") is not None:
            whatif = (
                f"{r['whatif_fused_critic_adam_steps_per_s']:.1f} steps/s "
                f"(×{r['whatif_fused_critic_adam_speedup']:.2f} d3rlpy)"
            )
        lines.append(
            f"| {r['loop']} | {r['width']} | {r['batch_size']} | {r['ours_steps_per_s']:.1f} | "
            f"{r['d3rlpy_steps_per_s']:.1f} | {r['speedup']:.2f} ({p['q1']:.2f}–{p['q3']:.2f}) | {whatif} |"
        )
    lines += [
        "",
        "`update`: each library's update call on pre-drawn batches; `train_loop`: draw a batch "
        "(d3rlpy's replay buffer / our device-tensor indexing) and update. What-if: our TD3+BC with "
        "`torch.optim.Adam(..., fused=True)` for the critic, swapped in on the instance (not in the library).",
    ]
    return lines


def target_lines(docs: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    if "update" in docs:
        rows = one_step_lookahead(docs["update"])["rows"]
        for r in sorted(rows, key=lambda r: (r["critic"], r["batch_size"], r["width"])):
            if r["k_alpha"] == 10:
                r1 = next((q for q in rows if q["k_alpha"] == 1 and
                           (q["critic"], q["batch_size"], q["width"]) == (r["critic"], r["batch_size"], r["width"])), None)
                derived = "" if r1 is None else f", from k_α=1: {derived_ratio(r1['ratio'], 10):.3f}"
                best = r["ratio"] if r1 is None else derived_ratio(r1["ratio"], 10)
                ok = "met" if best <= TARGET_ASPC_RATIO else "missed"
                lines.append(
                    f"- ASPC k_α=10 / TD3+BC ({r['critic']} critic, batch {r['batch_size']}, width {r['width']}): "
                    f"measured {r['ratio']:.3f} (quartiles {r['paired_ratio']['q1']:.2f}–{r['paired_ratio']['q3']:.2f})"
                    f"{derived} (target ≤ {TARGET_ASPC_RATIO}: {ok})"
                )
    if "peer" in docs:
        for r in sorted(docs["peer"]["rows"], key=lambda r: (r["loop"], r["width"], r["batch_size"])):
            ok = "met" if r["speedup"] >= TARGET_PEER_SPEEDUP else "missed"
            lines.append(
                f"- ours / d3rlpy steps/s ({r['loop']}, batch {r['batch_size']}, width {r['width']}): "
                f"{r['speedup']:.2f} (target ≥ {TARGET_PEER_SPEEDUP}: {ok})"
            )
    return lines


def plot(doc: dict[str, Any], path: Path) -> Path:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = one_step_lookahead(doc)["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for critic, batch, width in sorted({(r["critic"], r["batch_size"], r["width"]) for r in rows}):
        sub = sorted((r for r in rows if (r["critic"], r["batch_size"], r["width"]) == (critic, batch, width)),
                     key=lambda r: r["k_alpha"])
        ks = [r["k_alpha"] for r in sub]
        line = ax.errorbar(
            ks,
            [r["ratio"] for r in sub],
            yerr=[[max(0.0, r["ratio"] - r["paired_ratio"]["q1"]) for r in sub],
                  [max(0.0, r["paired_ratio"]["q3"] - r["ratio"]) for r in sub]],
            marker="o", capsize=3, label=f"{critic} critic, batch {batch}, width {width}",
        )
        if ks and ks[0] == 1:
            fine = [1 + i * (ks[-1] - 1) / 100 for i in range(101)]
            ax.plot(fine, [derived_ratio(sub[0]["ratio"], k) for k in fine], ls=":", lw=1,
                    color=line[0].get_color())
    ax.plot([], [], ls=":", color="black", lw=1, label="1 + (r(k=1) − 1)/k")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(TARGET_ASPC_RATIO, color="red", lw=0.8, ls="--", label=f"target {TARGET_ASPC_RATIO} at k_α=10")
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["k_alpha"] for r in rows}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("k_α (actor steps per α update)")
    ax.set_ylabel("time per update, ASPC / TD3+BC")
    m = doc["machine"]
    load = doc.get("load_average_at_start")
    load_txt = f", load {load[0]:.1f}" if load and m.get("device", "cpu").startswith("cpu") else ""
    ax.set_title(
        f"{m['device_name']} ({doc.get('threads')} thr{load_txt}), torch {m['torch']}, {m['date'][:10]}", fontsize=8
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def capture_table(doc: dict[str, Any]) -> list[str]:
    """``bench_capture.py``'s result: captured (torch.compile; CUDA graphs on a GPU) against eager updates."""
    lines = [f"{doc.get('device', '?')}, torch {doc.get('torch', '?')}, width {doc.get('width')}, batch {doc.get('batch')}, "
             f"load {_fmt_load(doc.get('load_before'))} before / {_fmt_load(doc.get('load_after'))} after", "",
             "| update | eager updates/s | captured updates/s | speed-up | compile s | graphs | max actor diff |",
             "|---|---|---|---|---|---|---|"]
    for name, row in doc.items():
        if not isinstance(row, dict):
            continue
        if "speedup" in row:
            lines.append(f"| {name}, one seed | {row['eager_updates_per_s']} | {row['captured_updates_per_s']} | "
                         f"{row['speedup']:.2f}× | {row['compile_s']} | {row['graphs']} | {row['max_actor_param_diff']:.1e} |")
        else:
            n = name.rsplit("seeds", 1)[-1]
            lines.append(f"| {name.split('-seeds')[0]}, {n} vmapped seeds ({row['seed_updates_per_s']} seed-updates/s; "
                         f"{row['vs_one_seed_captured']:.2f}× the time of one seed) | {row['eager_updates_per_s']} | "
                         f"{row['captured_updates_per_s']} | {row['captured_updates_per_s'] / row['eager_updates_per_s']:.2f}× | "
                         f"{row['compile_s']} | | |")
    return lines


def build(results_dir: Path = RESULTS) -> list[Path]:
    """Write TABLE.md and one ratio plot per (device, size) with an update suite; return the paths."""
    groups = load(results_dir)
    captures = sorted(results_dir.glob("capture-*.json"))
    if not groups and not captures:
        return []
    md = ["# Benchmark results", "", "Generated by `benchmarks/make_table.py` from `benchmarks/results/*.json`.", ""]
    outputs = []
    for (device, size), docs in groups.items():
        md += [f"## {device.upper()}, size `{size}`", ""]
        md += machine_lines(docs) + [""]
        if "update" in docs:
            png = plot(docs["update"], results_dir / f"ratio_vs_kalpha-{device}-{size}.png")
            outputs.append(png)
            md += ["### Per-update cost, ASPC / TD3+BC", ""] + update_table(docs["update"])
            md += ["", f"![ratio vs k_α]({png.name})", ""]
            horizons = horizon_table(docs["update"])
            if horizons:
                md += ["### Lookahead horizon, ASPC / TD3+BC at k_α = 10", ""] + horizons + [""]
        if "hypergrad" in docs:
            md += ["### Hypergradient backends", ""] + hypergrad_table(docs["hypergrad"]) + [""]
        if "seeds" in docs:
            md += ["### Several seeds in one process (vmap)", ""] + seeds_table(docs["seeds"]) + [""]
        if "peer" in docs:
            md += ["### Our TD3+BC vs d3rlpy TD3PlusBC", ""] + peer_table(docs["peer"]) + [""]
        targets = target_lines(docs)
        if targets:
            md += ["### Targets (issue 8)", ""] + targets + [""]
    for path in captures:
        md += [f"## Captured update against eager (`bench_capture.py`, {path.name})", ""]
        md += capture_table(json.loads(path.read_text())) + [""]
    table = results_dir / "TABLE.md"
    table.write_text("\n".join(md))
    return [table, *outputs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder with the result JSON files")
    args = ap.parse_args()
    if not args.results.is_dir():
        raise SystemExit(f"no results folder at {args.results}: run the benchmarks first (see benchmarks/README.md)")
    paths = build(args.results)
    if not paths:
        raise SystemExit(f"no result files (*.json) in {args.results}: run the benchmarks first")
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
