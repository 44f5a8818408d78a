"""Grids of training runs (models x norms x seeds): ``compare`` and the paper's three ablations.

Each run trains in ``runs/<grid>/<model>/<norm>/seed<k>`` (checkpoints, resumable; not committed) and
its result JSON is copied to ``results/<grid>/runs/`` (small, committed). Runs finished in ``runs/`` are
skipped, unfinished ones resume; a fresh clone (no ``runs/``) trains every run again and rewrites the results. The summary is ``runs.csv``, ``table.md`` (mean +- std over seeds, and the
paired difference of each norm against the family's base norm with its spread) and one PNG of
validation curves per model.
"""
from __future__ import annotations

import csv
import io
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .io import atomic_save_figure, atomic_write_json, atomic_write_text
from .models import get_preset
from .train import TrainConfig, train

ALL_MODELS = ["gpt2-mini", "llama-mini", "vit-mini", "resnet-mini"]
IB_OPS = ["ib_power", "ib_log", "ib_tanh"]


@dataclass(frozen=True)
class GridPreset:
    """What a preset runs, and the training settings per task (the same for every norm)."""

    models: tuple
    norms: tuple
    seeds: tuple
    lm: dict = field(default_factory=dict)
    vision: dict = field(default_factory=dict)


GRID_PRESETS = {
    # Every family, base norm vs the three IBNorm ops, one seed: about 10-15 minutes on 2 cores.
    "quick": GridPreset(tuple(ALL_MODELS), ("base", *IB_OPS), (0,),
                        lm=dict(steps=120, eval_every=40, eval_batches=8),
                        vision=dict(steps=150, eval_every=50, eval_examples=2000)),
    # Every family, every norm and peer, three seeds, longer training: hours on 2 cores.
    "full": GridPreset(tuple(ALL_MODELS), ("base", *IB_OPS, "normalnorm", "dyt"), (0, 1, 2),
                       lm=dict(steps=1500, eval_every=250, eval_batches=32),
                       vision=dict(steps=1500, eval_every=250, eval_examples=0)),
}

ABLATIONS = ("strength", "order", "affine")
STRENGTH_VALUES = {"ib_power": (0.25, 0.5, 0.75, 1.0), "ib_log": (0.1, 0.5, 1.0, 2.0), "ib_tanh": (0.1, 0.5, 1.0, 2.0)}


def ablation_norms(kind: str, ops: Iterable[str] = IB_OPS) -> list[str]:
    """The norm specs of one of the paper's ablations."""
    ops = list(ops)
    if kind == "strength":
        return ["base"] + [f"{op}:strength={v}" for op in ops for v in STRENGTH_VALUES[op]]
    if kind == "order":
        return ["base"] + [s for op in ops for s in (op, f"{op}:order=standardize_then_compress")]
    if kind == "affine":
        return ["base", "base:affine=0"] + [s for op in ops for s in (op, f"{op}:affine=0")]
    raise ValueError(f"ablation must be one of {ABLATIONS}; got {kind!r}")


def slug(norm: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", norm.replace(":", "__").replace("=", "-").replace(",", "_"))


def run_config(preset: GridPreset, model: str, norm: str, seed: int, **overrides) -> TrainConfig:
    task = get_preset(model).task
    settings = dict(preset.lm if task == "lm" else preset.vision, **overrides)  # command-line overrides win
    return TrainConfig(model=model, norm=norm, seed=seed, **settings)


def run_grid(name: str, preset: GridPreset, results_dir: Path, runs_dir: Path, progress: bool = True,
             **overrides) -> list[dict]:
    """Train every (model, norm, seed) not finished yet; return all results."""
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    grid = [(m, n, s) for m in preset.models for n in preset.norms for s in preset.seeds]
    results = []
    t0 = time.time()
    for i, (model, norm, seed) in enumerate(grid, 1):
        run_dir = runs_dir / model / slug(norm) / f"seed{seed}"
        state = "done" if (run_dir / "result.json").exists() else "trained"
        # train() returns a finished run's result as it is and resumes an unfinished one.
        result = train(run_config(preset, model, norm, seed, progress=progress, **overrides), run_dir)
        atomic_write_json(results_dir / "runs" / f"{model}__{slug(norm)}__s{seed}.json", result)
        results.append(result)
        f = result["final"]
        metric = f"acc {f['val_acc']:.4f}" if "val_acc" in f else f"ppl {f['val_ppl']:.3f}"
        print(f"[{name} {i}/{len(grid)}] {model:12s} {norm:40s} seed {seed}: val_loss {f['val_loss']:.4f} "
              f"{metric} ({state}, {result['wall_time_s']:.0f}s; sweep {time.time() - t0:.0f}s)", file=sys.stderr)
    return results


def _mean_std(xs: list[float]) -> tuple[float, Optional[float]]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None)


def _fmt(mean: float, std: Optional[float], digits: int = 4) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(results_dir / "runs.csv", buf.getvalue())

    lines = [f"# {title}", "", f"Regenerate: `{command}`", "",
             "Final validation metrics, mean ± std over seeds (std needs 2+ seeds). Δ is the paired "
             "difference to the family's base norm (same seed), mean ± std over seeds; for loss and "
             "perplexity lower is better, for accuracy higher is better.", ""]
    by_model: dict[str, dict[str, dict[int, dict]]] = {}
    for r in results:
        c = r["config"]
        by_model.setdefault(c["model"], {}).setdefault(c["norm"], {})[c["seed"]] = r
    for model, norms in by_model.items():
        preset = get_preset(model)
        key = "val_acc" if preset.task == "vision" else "val_loss"
        extra = "val_ppl" if preset.task == "lm" else "val_loss"
        lines += [f"## {model} (base norm: {preset.base_norm})", "",
                  f"| norm | {key} | Δ {key} vs base | {extra} | seeds | wall s / run |", "|---|---|---|---|---|---|"]
        base = norms.get("base", {})
        for norm, seeds in norms.items():
            vals = [s["final"][key] for s in seeds.values()]
            extras = [s["final"][extra] for s in seeds.values()]
            paired = [seeds[k]["final"][key] - base[k]["final"][key] for k in seeds if k in base]
            delta = "—" if norm == "base" or not paired else _fmt(*_mean_std(paired), digits=4)
            wall = statistics.fmean(s["wall_time_s"] for s in seeds.values())
            lines.append(f"| {norm} | {_fmt(*_mean_std(vals))} | {delta} | {_fmt(*_mean_std(extras), digits=3)} | "
                         f"{len(vals)} | {wall:.0f} |")
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
    atomic_save_figure(fig, path)
