"""Grids of training runs (models x norms x seeds): ``compare`` and the paper's three ablations.

Each run trains in ``runs/<grid>/<model>/<norm>/seed<k>`` (checkpoints, resumable; not committed) and
its result JSON is copied to ``results/<grid>/runs/`` (small, committed). Runs finished in ``runs/`` are
skipped, unfinished ones resume; a fresh clone (no ``runs/``) trains every run again and rewrites the results. The summary is ``runs.csv``, ``table.md`` (mean +- std over seeds, and the
paired difference of each norm against the family's base norm with its spread) and one PNG of
validation curves per model, written by :mod:`ibnorm.lab.report`.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..atomic import atomic_write_json
from .models import MINI_PRESETS, get_preset
from .tasks import task_kind
from .train import TrainConfig, train

ALL_MODELS = list(MINI_PRESETS)  # the grids' models; `ibnorm train` takes the scale presets too
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
        f, kind = result["final"], task_kind(model)
        print(f"[{name} {i}/{len(grid)}] {model:12s} {norm:40s} seed {seed}: {kind.metric} {f[kind.metric]:.4f} "
              f"{kind.secondary} {f[kind.secondary]:.4f} ({state}, {result['wall_time_s']:.0f}s; sweep {time.time() - t0:.0f}s)", file=sys.stderr)
    return results
