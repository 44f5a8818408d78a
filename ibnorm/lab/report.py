"""Tables and figures of a grid's results: ``runs.csv`` (one row per run), ``table.md`` (mean ± std over
seeds, and the paired difference of each norm to the family's base norm) and validation curves per model."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from ..atomic import atomic_write_text
from .models import get_preset
from .records import save_figure, write_csv
from .tasks import task_kind


def _mean_std(xs: list[float]) -> tuple[float, Optional[float]]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None)


def _fmt(mean: float, std: Optional[float], digits: int = 4) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def run_seconds(results: list[dict]) -> str:
    """The mean CPU seconds of the runs' own training since their last start or resume (``*``: one was resumed);
    results from before that was recorded give their wall time, marked ``(wall)``."""
    cpu = [r.get("session_cpu_s") for r in results]
    if None in cpu:
        return f"{statistics.fmean(r['wall_time_s'] for r in results):.0f} (wall)"
    return f"{statistics.fmean(cpu):.0f}" + ("*" if any(r.get("resumed_from") for r in results) else "")


def summarize(results: list[dict], results_dir: Path, title: str, command: str) -> str:
    """Write runs.csv, table.md and the curve plots; return the markdown table."""
    results_dir = Path(results_dir)
    rows = []
    for r in results:
        c, f = r["config"], r["final"]
        rows.append({"model": c["model"], "norm": c["norm"], "seed": c["seed"], "steps": c["steps"],
                     "val_loss": f["val_loss"], "val_acc": f.get("val_acc", ""), "val_ppl": f.get("val_ppl", ""),
                     "train_loss": f["train_loss"], "wall_time_s": round(r["wall_time_s"], 2),
                     "threads": r["environment"]["threads"], "torch": r["environment"]["torch"]})
    write_csv(results_dir / "runs.csv", rows)

    lines = [f"# {title}", "", f"Regenerate: `{command}`", "",
             "Final validation metrics, mean ± std over seeds (std needs 2+ seeds). Δ is the paired "
             "difference to the family's base norm (same seed), mean ± std over seeds; for loss and "
             "perplexity lower is better, for accuracy higher is better. CPU s / run: the process CPU time of the "
             "training (all its threads) since the run's last start or resume, so neither the time before a kill nor "
             "waiting on a busy machine counts; * marks a run resumed from a checkpoint (its earlier part is not in "
             "the figure).", ""]
    by_model: dict[str, dict[str, dict[int, dict]]] = {}
    for r in results:
        c = r["config"]
        by_model.setdefault(c["model"], {}).setdefault(c["norm"], {})[c["seed"]] = r
    for model, norms in by_model.items():
        preset, kind = get_preset(model), task_kind(model)
        key, extra = kind.metric, kind.secondary
        lines += [f"## {model} (base norm: {preset.base_norm})", "",
                  f"| norm | {key} | Δ {key} vs base | {extra} | seeds | CPU s / run |", "|---|---|---|---|---|---|"]
        base = norms.get("base", {})
        for norm, seeds in norms.items():
            vals = [s["final"][key] for s in seeds.values()]
            extras = [s["final"][extra] for s in seeds.values()]
            paired = [seeds[k]["final"][key] - base[k]["final"][key] for k in seeds if k in base]
            delta = "—" if norm == "base" or not paired else _fmt(*_mean_std(paired), digits=4)
            lines.append(f"| {norm} | {_fmt(*_mean_std(vals))} | {delta} | {_fmt(*_mean_std(extras), digits=3)} | "
                         f"{len(vals)} | {run_seconds(list(seeds.values()))} |")
        lines.append("")
        _plot_curves(model, norms, key, results_dir / f"curves_{model}.png")
        lines += [f"![{model} validation curves](curves_{model}.png)", ""]
    table = "\n".join(lines)
    atomic_write_text(results_dir / "table.md", table + "\n")
    return table


def _plot_curves(model: str, norms: dict, key: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for norm, seeds in norms.items():
        curves = [[(h["step"], h[key]) for h in s["history"]] for s in seeds.values()]
        steps = [p[0] for p in curves[0]]
        ys = [[c[i][1] for c in curves if i < len(c)] for i in range(len(steps))]
        mean = [statistics.fmean(y) for y in ys]
        line, = ax.plot(steps, mean, marker="o", ms=3, label=norm)
        if len(curves) > 1:
            ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(f"{model}: validation {key.replace('val_', '')} (mean over seeds, band = min-max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
