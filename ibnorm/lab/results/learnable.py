"""Learnable strength: what each layer learned, on the one contraction scale every op shares."""
from __future__ import annotations

import statistics
from pathlib import Path

from ...ops import COMPRESSIONS
from .. import reproduce as R
from ..records import save_figure
from .common import _models, _per_norm


def normal_contraction(op: str, strength: float, points: int = 4001) -> float:
    """var(s(u)) / var(u) over standard-normal quantiles (the base norm's output): how much ``op`` at ``strength``
    compresses, on one scale for every op (1: not at all). Strengths of different ops are not comparable; this is."""
    import torch
    u = torch.special.ndtri((torch.arange(points, dtype=torch.float64) + 0.5) / points)
    return (COMPRESSIONS[op].s(u, strength).var() / u.var()).item()


def _op(norm: str) -> str:
    return norm.split(":")[0].removeprefix("ib_")


def learned_layers(runs: list[dict]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(model, norm) -> (strength, contraction) per norm layer in model order, each the mean over seeds."""
    learned = [r for r in runs if r.get("stage") == "learnable" and r.get("learned_strength")]
    out = {}
    for model in _models(R.FAMILIES, learned):
        for norm, seeds in _per_norm(learned, model, lambda r: list(r["learned_strength"].values())):
            strength = [statistics.fmean(v) for v in zip(*seeds)]
            contraction = [statistics.fmean(normal_contraction(_op(norm), x) for x in v) for v in zip(*seeds)]
            out[(model, norm)] = strength, contraction
    return out


NO_COMPRESSION = 0.99  # a layer whose learned contraction is at least this has switched compression off


def learned_compression_lines(runs: list[dict]) -> list[str]:
    """Per family and op: the compression each layer learned, on the contraction scale every op shares."""
    layers = learned_layers(runs)
    if not layers:
        return []
    ref = {op: normal_contraction(_op(op), R.REFERENCE_STRENGTH) for op in R.IB_OPS}
    lines = ["What each layer learned, as the variance contraction var(s(u))/var(u) of a standard-normal u at its "
             "learned strength (1: no compression; at the default strength "
             + ", ".join(f"{op} {c:.2f}" for op, c in ref.items())
             + "). Layers in model order, each the mean over seeds.", "",
             "| family | norm | layers | contraction per layer | compression off (≥ "
             f"{NO_COMPRESSION:g}) | stronger than the default |", "|---|---|---|---|---|---|"]
    for (model, norm), (_, contraction) in layers.items():
        off = sum(c >= NO_COMPRESSION for c in contraction)
        stronger = sum(c < ref[norm.split(":")[0]] for c in contraction)
        lines.append(f"| {model} | {norm} | {len(contraction)} | {' '.join(f'{c:.2f}' for c in contraction)} | "
                     f"{off} of {len(contraction)} | {stronger} of {len(contraction)} |")
    return lines + [""]


def strength_plot(runs: list[dict], path: Path) -> bool:
    """The strength each layer learned (top) and the contraction it gives (bottom), per family and op, mean over
    seeds; False when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = learned_layers(runs)
    models = list(dict.fromkeys(model for model, _ in layers))
    if not models:
        return False
    fig, axes = plt.subplots(2, len(models), figsize=(4.0 * len(models), 6.4), squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        for (m, norm), (strength, contraction) in layers.items():
            if m == model:
                line, = top.plot(range(len(strength)), strength, "o-", ms=3, label=norm.split(":")[0])
                bottom.plot(range(len(contraction)), contraction, "o-", ms=3, color=line.get_color())
                bottom.axhline(normal_contraction(_op(norm), R.REFERENCE_STRENGTH), color=line.get_color(),
                               lw=0.6, ls=":")
        top.axhline(R.REFERENCE_STRENGTH, color="k", lw=0.6, ls="--")
        top.set_title(f"{model}: learned strength per layer", fontsize=9)
        top.set_ylabel("strength (power: 1 is no compression;\nlog, tanh: 0 is none)", fontsize=7)
        bottom.axhline(1.0, color="k", lw=0.6, ls="--")
        bottom.set_title(f"{model}: compression it gives (dotted: at {R.REFERENCE_STRENGTH:g})", fontsize=9)
        bottom.set_ylabel("var(s(u))/var(u), u ~ N(0,1)", fontsize=7)
        bottom.set_xlabel("norm layer (model order)", fontsize=8)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True
