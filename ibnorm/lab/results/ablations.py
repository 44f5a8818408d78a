"""Claim 5: the ablations, the strength the evidence supports, and the strength plot."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from ...ops import COMPRESSIONS
from .. import reproduce as R
from ..records import save_figure
from ..tasks import task_kind
from .common import _models, _ms, _panels, _per_norm, by_seed, metric, score_verdict, versus


def ablation_section(runs: list[dict]) -> tuple[list[str], dict]:
    abl = [r for r in runs if r.get("stage") == "ablation"]
    lines = ["## Ablations (claim 5)", "",
             "Tuning budget, seeds 0-2. Each variant is paired by seed against the same op at its defaults "
             "(strength 0.5, compress-then-standardize, affine); `base:affine=0` against the base norm.", ""]
    comparisons = {}
    if not abl:
        return lines + ["No run of this stage has finished yet.", ""], comparisons
    values = by_seed(abl)
    for model in R.ABLATION_MODELS:
        kind = task_kind(model)
        rows = [k for k in values if k[0] == model]
        if not rows:
            continue
        lines += [f"### {model}", "", "| variant | seeds | score | Δ vs its reference [95% CI] | verdict |", "|---|---|---|---|---|"]
        for r_kind, norms in R.ABLATION_NORMS.items():
            for norm in norms:
                v = values.get((model, norm))
                if v is None:
                    continue
                ref = norm.split(":")[0] if r_kind != "reference" else "base"
                p, delta, verdict = versus(v, None if norm == "base" else values.get((model, ref), {}),
                                           kind.higher_is_better)
                if p is not None:
                    comparisons[(model, norm)] = (p, verdict)
                lines.append(f"| {norm} | {len(v)} | {_ms(list(v.values()), 4)} | {delta} | "
                             f"{score_verdict(p, verdict, model)} |")
        lines.append("")
    return lines + default_strength_lines(comparisons), comparisons


def evidenced_default(op: str, comparisons: dict) -> Optional[float]:
    """The default strength the strength ablation supports for ``op``: a strength replaces the default only when it
    beats it beyond its interval in every ablation model (the largest mean gain among those that do); None while a
    comparison is missing."""
    default = R.REFERENCE_STRENGTH  # what the ablation's reference runs used, whatever the library's default is now
    gains = {}
    for v in R.STRENGTHS[op]:
        if v == default:
            continue
        found = [comparisons.get((m, f"{op}:strength={v}")) for m in R.ABLATION_MODELS]
        if None in found:
            return None
        if all(verdict == "better" for _, verdict in found):
            gains[v] = statistics.fmean(abs(p.mean) for p, _ in found)  # "better" already holds the direction
    return max(gains, key=gains.get) if gains else default


def default_strength_lines(comparisons: dict) -> list[str]:
    parts = []
    for op in R.IB_OPS:
        now, supported = COMPRESSIONS[op.removeprefix("ib_")].default, evidenced_default(op, comparisons)
        parts.append(f"{op}: " + ("pending" if supported is None else f"{supported:g}")
                     + f" (library default {now:g})")
    return [f"Default strengths the evidence supports (a strength replaces the ablations' reference "
            f"{R.REFERENCE_STRENGTH:g} only when it beats it beyond its interval in every ablation model; "
            f"`tests/test_reproduce.py` checks the library's defaults against this): {'; '.join(parts)}.", ""]


def ablation_strength_plot(runs: list[dict], path: Path) -> bool:
    """Each op's ablation score against its strength (mean and sd over seeds; the default 0.5 is the op's reference
    run), with the base norm as a line; False when there is nothing to plot."""
    abl = [r for r in runs if r.get("stage") == "ablation" and metric(r) is not None]
    if not any("strength=" in r["config"]["norm"] for r in abl):
        return False
    fig, panels = _panels(_models(R.ABLATION_MODELS, abl), 4.2, 3.4)
    for ax, model in panels:
        scores = dict(_per_norm(abl, model, metric))
        for op in R.IB_OPS:
            points = [(v, scores.get(op if v == R.REFERENCE_STRENGTH else f"{op}:strength={v}")) for v in R.STRENGTHS[op]]
            points = [(v, ys) for v, ys in points if ys]
            if points:
                ax.errorbar([v for v, _ in points], [statistics.fmean(ys) for _, ys in points],
                            yerr=[statistics.stdev(ys) if len(ys) > 1 else 0.0 for _, ys in points],
                            fmt="o-", ms=3, capsize=2, label=op)
        if scores.get("base"):
            ax.axhline(statistics.fmean(scores["base"]), color="k", lw=0.8, ls="--", label="base norm")
        kind = task_kind(model)
        ax.set_xscale("log")
        ax.minorticks_off()  # log-scale minor labels would overprint the strengths
        ax.set_xticks([0.1, 0.25, 0.5, 1.0, 2.0], ["0.1", "0.25", "0.5", "1", "2"])
        ax.set_title(f"{model}: strength ablation (tuning budget)", fontsize=9)
        ax.set_xlabel("strength", fontsize=8)
        ax.set_ylabel(f"{'test accuracy' if kind.name == 'vision' else 'validation nats/byte'} "
                      f"({'higher' if kind.higher_is_better else 'lower'} is better)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True
