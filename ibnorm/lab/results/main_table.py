"""Claim 1's main table, its forest plot and the training curves."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .. import reproduce as R
from ..records import save_figure
from ..tasks import task_kind
from .common import _models, _ms, _panels, _per_norm, by_seed, score_verdict, versus
from .decisive import DECISION_HEADER, decide, decide_family, decision_cells


def main_section(runs: list[dict], stage: str = "main", title: str = "Main table (claim 1)") -> tuple[list[str], dict]:
    """The table of one stage's runs against the main table's base norm; returns its lines and the comparisons."""
    main = [r for r in runs if r.get("stage") == stage]
    values = by_seed(main)
    main_values = by_seed([r for r in runs if r.get("stage") == "main"])
    base_values = {k: v for k, v in main_values.items() if k[1] == "base"}
    lrs = {(r["config"]["model"], r["config"]["norm"]): r["config"]["lr"] for r in main}
    diverged = defaultdict(list)
    for r in main:
        if "final" not in r:
            diverged[(r["config"]["model"], r["config"]["norm"])].append(r["config"]["seed"])
    lines = [f"## {title}", ""]
    comparisons = {}
    if not main:
        return lines + ["No run of this stage has finished yet.", ""], comparisons
    for model in R.FAMILIES:
        norms = [n for (m, n) in values if m == model] + [n for (m, n) in diverged if m == model and (m, n) not in values]
        if not norms:
            continue
        kind = task_kind(model)
        digits = 4
        name = "test accuracy" if kind.name == "vision" else "validation nats/byte"
        learnable = stage == "learnable"  # also against the op at its fixed default strength, and its rank
        lines += [f"### {model} ({name}, {'higher' if kind.higher_is_better else 'lower'} is better)", "",
                  f"| norm | lr | seeds | {name} | Δ vs base [95% CI] | verdict |"
                  + (" Δ vs fixed strength [95% CI] | verdict | rank among the main table's norms |" if learnable else ""),
                  "|---|---|---|---|---|---|" + ("---|---|---|" if learnable else "")]
        base = base_values.get((model, "base"), {})
        main_means = {n: statistics.fmean(v.values()) for (m, n), v in main_values.items() if m == model}
        for norm in sorted(set(norms), key=lambda n: (n != "base", n)):
            v = values.get((model, norm), {})
            p, delta, verdict = versus(v, None if norm == "base" else base, kind.higher_is_better, digits)
            if p is not None:
                comparisons[(model, norm)] = (p, verdict)
            seeds = f"{len(v)}" + (f" (+{len(diverged[(model, norm)])} diverged)" if diverged.get((model, norm)) else "")
            row = (f"| {norm} | {lrs[(model, norm)]:g} | {seeds} | {_ms(list(v.values()), digits)} | {delta} | "
                   f"{score_verdict(p, verdict, model)} |")
            if learnable:
                fixed = norm.split(":")[0]
                f_p, f_delta, f_verdict = versus(v, main_values.get((model, fixed), {}), kind.higher_is_better, digits)
                rank = "—"
                if v and main_means:
                    mine = statistics.fmean(v.values())
                    ahead = sum(1 for x in main_means.values() if (x > mine if kind.higher_is_better else x < mine))
                    rank = f"{ahead + 1} of {len(main_means) + 1}"
                row += f" {f_delta} | {score_verdict(f_p, f_verdict, model)} | {rank} |"
            lines.append(row)
        lines.append("")
    return lines, comparisons


def bounds_lines() -> list[str]:
    """The smallest effects of interest and the rule that uses them, as fixed before the decisive sweep."""
    return [f"Smallest effect of interest, fixed before the decisive sweep's runs: ±{R.EQUIVALENCE_TEXT['vision']} "
            f"for vision, ±{R.EQUIVALENCE_TEXT['lm']} for the LMs. Vision: the size of the gains normalization papers "
            "headline at ImageNet scale (Derf over LayerNorm on ViT-B +0.5, DyT +0.2), and several times the base "
            "norms' seed-to-seed sd here. LMs: 0.7-0.8% of the base norms' loss; near llama-mini's seed sd (0.006) "
            "but under gpt2-mini's (0.023), which is why gpt2-mini needs many seeds.", "",
            "Verdict rule (paired t over seeds, two-sided, α = 0.05): \"better\" or \"worse\" when the Holm-adjusted "
            "p-value is below 0.05; otherwise \"equivalent\" when the 90% interval lies inside ± the bound (TOST); "
            "otherwise \"inconclusive\". The Holm family is the 12 op × family comparisons of this table; the peers' "
            "p-values are unadjusted. MDD: the smallest true difference this many seeds detect with 80% power (from "
            "the observed sd of the differences); the next column: seeds needed to detect a difference the size of "
            "the bound.", ""]


def main_table_section(runs: list[dict]) -> tuple[list[str], dict, dict]:
    """Claim 1's main table with the decisive statistics; returns its lines, the comparisons (95% interval and
    verdict, for the claims table and the forest plot) and the decisions."""
    main = [r for r in runs if r.get("stage") == "main"]
    values = by_seed(main)
    lrs = {(r["config"]["model"], r["config"]["norm"]): r["config"]["lr"] for r in main}
    diverged = defaultdict(list)
    for r in main:
        if "final" not in r:
            diverged[(r["config"]["model"], r["config"]["norm"])].append(r["config"]["seed"])
    lines = ["## Main table (claim 1; exploratory)", "",
             "*Exploratory*: seeds 0-7 for the base norm and the ops (0-2 chose the confirmatory configuration), "
             "0-2 for the peers, each norm at the rate its grid chose. The confirmatory test above decides claim 1.",
             ""] + bounds_lines()
    if not main:
        return lines + ["No run of this stage has finished yet.", ""], {}, {}
    base = {m: values.get((m, "base"), {}) for m in R.FAMILIES}
    family = {k: (v, base[k[0]]) for k, v in values.items() if k[1] in R.IB_OPS}
    decisions = decide_family(family)
    decisions.update({k: d for k, v in values.items() if k[1] not in R.IB_OPS and k[1] != "base"
                      for d in [decide(v, base[k[0]], k[0])] if d is not None})
    comparisons = {k: (d.p95, d.verdict) for k, d in decisions.items()}
    for model in R.FAMILIES:
        norms = [n for (m, n) in values if m == model] + [n for (m, n) in diverged if m == model and (m, n) not in values]
        if not norms:
            continue
        kind = task_kind(model)
        name = "test accuracy" if kind.name == "vision" else "validation nats/byte"
        lines += [f"### {model} ({name}, {'higher' if kind.higher_is_better else 'lower'} is better; bound "
                  f"±{R.EQUIVALENCE_TEXT[kind.name]})", "",
                  f"| norm | lr | seeds | {name} | {DECISION_HEADER} |", "|---|---|---|---|---|---|---|---|---|---|"]
        for norm in sorted(set(norms), key=lambda n: (n != "base", n not in R.IB_OPS, n)):
            v = values.get((model, norm), {})
            seeds = f"{len(v)}" + (f" (+{len(diverged[(model, norm)])} diverged)" if diverged.get((model, norm)) else "")
            cells = ["—"] * 6 if norm == "base" else decision_cells(decisions.get((model, norm)), model)
            lines.append(f"| {norm} | {lrs[(model, norm)]:g} | {seeds} | {_ms(list(v.values()), 4)} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return lines, comparisons, decisions


def forest_range(every: list, ib: list) -> tuple[float, float]:
    """The x-range of one forest panel: every interval when they share a scale; otherwise the IBNorm ops' intervals
    and 0, widened threefold, so that a far-off peer (DyT's stalled LMs) does not squash them into a dot."""
    def span(ps):
        return min([0.0] + [p.low for p in ps]), max([0.0] + [p.high for p in ps])
    (a_lo, a_hi), (i_lo, i_hi) = span(every), span(ib or every)
    width = max(i_hi - i_lo, 1e-9)
    if a_hi - a_lo <= 4 * width:
        lo, hi = a_lo, a_hi
    else:
        lo, hi = i_lo - width, i_hi + width
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def forest_plot(comparisons: dict, path: Path) -> None:
    fig, panels = _panels([m for m in R.FAMILIES if any(k[0] == m for k in comparisons)], 3.6, 3.4)
    for ax, model in panels:
        items = sorted((n, p) for (m, n), (p, _) in comparisons.items() if m == model)
        lo, hi = forest_range([p for _, p in items], [p for n, p in items if n in R.IB_OPS])
        for i, (norm, p) in enumerate(items):
            color = "tab:green" if p.verdict(task_kind(model).higher_is_better) == "better" else (
                "tab:red" if p.verdict(task_kind(model).higher_is_better) == "worse" else "tab:gray")
            if lo <= p.mean <= hi:  # an interval running past the edge is clipped there
                ax.errorbar(p.mean, i, xerr=[[p.mean - p.low], [p.high - p.mean]], fmt="o", color=color, capsize=3)
            else:  # off the scale the IBNorm ops need: an arrow at the edge with the value
                edge, side = (hi, "right") if p.mean > hi else (lo, "left")
                ax.annotate(f"{p.mean:+.3g} [{p.low:+.3g}, {p.high:+.3g}]", (edge, i), xytext=(-4 if side == "right" else 4, 0),
                            textcoords="offset points", ha="right" if side == "right" else "left", va="center",
                            fontsize=7, color=color, arrowprops=None)
                ax.plot(edge, i, marker=">" if side == "right" else "<", color=color)
        ax.set_xlim(lo, hi)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=8)
        kind = task_kind(model)
        ax.set_xlabel("Δ test accuracy" if kind.name == "vision" else "Δ val nats/byte (lower better)", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Paired Δ vs the base norm, 95% t-interval (green better, red worse; an arrow: off the scale, "
                 "its value written)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def curves_plot(runs: list[dict], path: Path) -> None:
    main = [r for r in runs if r.get("stage") == "main" and "final" in r]
    fig, panels = _panels(_models(R.FAMILIES, main), 4.0, 3.4)
    for ax, model in panels:
        for norm, curves in _per_norm(main, model, lambda r: r["curve"]):
            n = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(n)]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            ax.plot(steps, mean, lw=0.8, label=norm)
        ax.set_title(f"{model}: training loss (mean over seeds)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
