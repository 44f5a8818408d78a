"""The scale ladder: how the registered configuration's gap to the base norm moves as the model grows."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import reproduce as R
from ..models import get_preset
from ..records import save_figure
from ..tasks import task_kind
from .common import _ms, _panels, metric, versus

SCALE_COLUMNS = ["stage", "tag", "model", "norm", "seed", "width", "depth", "n_params", "lr", "steps", "score"]


def _size(r: dict) -> tuple[int, int]:
    c, defaults = r["config"], get_preset(r["config"]["model"]).defaults
    return (c.get("width") or defaults["width"], c.get("depth") or defaults["depth"])


def scale_rows(runs: list[dict]) -> list[dict]:
    """A row per run of the ladder (tuning and seeds), for results/scale/runs.csv."""
    return [{"stage": r.get("stage", ""), "tag": r.get("tag", ""), "model": r["config"]["model"],
             "norm": r["config"]["norm"], "seed": r["config"]["seed"], "width": _size(r)[0], "depth": _size(r)[1],
             "n_params": r.get("n_params", ""), "lr": r["config"]["lr"], "steps": r["config"]["steps"],
             "score": "" if metric(r) is None else metric(r)} for r in runs]


def _gaps(runs: dict[str, list[dict]], reg: dict) -> dict[str, list[tuple[int, tuple, object, dict, dict]]]:
    """model -> [(n_params, size, paired Δ, pick values, base values)] from the family's own size (the confirmatory
    seeds) up the ladder."""
    out: dict = {}
    confirm = runs.get("confirmatory", []) + [r for r in runs.get("reproduction", []) if r.get("stage") == "main"]
    scale = [r for r in runs.get("scale", []) if r.get("stage") == "scale"]
    for model, sizes in R.LADDER.items():
        if model not in reg:
            continue
        norm, kind = reg[model]["norm"], task_kind(model)
        rungs = [(get_preset(model).defaults["width"], get_preset(model).defaults["depth"]), *sizes]
        for size in rungs:
            own = size == rungs[0]
            pool = confirm if own else [r for r in scale if _size(r) == size]
            seeds = set(R.CONFIRM_SEEDS) if own else set(R.SEEDS)
            vals = {n: {r["config"]["seed"]: metric(r) for r in pool if r["config"]["model"] == model and
                        r["config"]["norm"] == n and r["config"]["seed"] in seeds and metric(r) is not None}
                    for n in (norm, "base")}
            params = [r.get("n_params") for r in pool if r["config"]["model"] == model and r.get("n_params")]
            p, _, _ = versus(vals[norm], vals["base"], kind.higher_is_better)
            if p is not None and params:
                out.setdefault(model, []).append((params[0], size, p, vals[norm], vals["base"]))
    return out


def scale_section(runs: dict[str, list[dict]], results_root: Optional[Path], figures: bool = True) -> list[str]:
    lines = ["## Scale ladder (claim 1 as the model grows; exploratory)", "",
             "*Exploratory.* llama-mini and vit-mini at twice the width, then twice the width and depth; the base norm "
             "against the registered confirmatory configuration, each rate tuned per size by the grid rule, seeds "
             f"{', '.join(map(str, R.SEEDS))}. The family's own size is the confirmatory test's seeds. Δ is paired by "
             "seed (positive: IBNorm better in accuracy; for the LMs, negative nats/byte is better).", ""]
    reg = R.registered(results_root) if results_root is not None else None
    if reg is None:
        return lines + ["Waits on the pre-registration (the configuration it compares).", ""]
    gaps = _gaps(runs, reg)
    if not gaps:
        return lines + ["No rung has finished yet.", ""]
    lines += ["| family | width × depth | parameters | seeds | registered | base | Δ [95% CI] |", "|---|---|---|---|---|---|---|"]
    for model, rows in gaps.items():
        for n_params, (w, d), p, mine, base in rows:
            _, delta, _ = versus(mine, base, task_kind(model).higher_is_better)
            lines.append(f"| {model} | {w} × {d} | {n_params:,} | {p.n} | {_ms(list(mine.values()), 4)} | "
                         f"{_ms(list(base.values()), 4)} | {delta} |")
    lines.append("")
    if figures and results_root is not None:
        scale_plot(gaps, Path(results_root) / "scale" / "scale.png")
        lines += ["![scale ladder](results/scale/scale.png)", ""]
    return lines


def scale_plot(gaps: dict, path: Path) -> None:
    fig, panels = _panels(list(gaps), 4.2, 3.4)
    for ax, model in panels:
        rows = gaps[model]
        xs = [n for n, *_ in rows]
        ps = [p for _, _, p, _, _ in rows]
        ax.errorbar(xs, [p.mean for p in ps], yerr=[[p.mean - p.low for p in ps], [p.high - p.mean for p in ps]],
                    fmt="o-", capsize=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        kind = task_kind(model)
        ax.set_xlabel("parameters", fontsize=8)
        ax.set_ylabel("Δ test accuracy" if kind.name == "vision" else "Δ val nats/byte (lower better)", fontsize=8)
        ax.set_title(f"{model}: registered config − base, 95% CI", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


