"""The learning-rate grids (tuning budget) and what they show: edges, flat and stalled rows, the DyT diagnosis."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .. import reproduce as R
from .common import CURVE_EVERY, SPIKE_WINDOW, max_loss_rise, metric


def tuning_section(runs: list[dict], results_root: Optional[Path] = None) -> list[str]:
    tune = [r for r in runs if r.get("stage") == "tune"]
    lines = ["## Learning-rate grids (tuning budget, validation split carved from the training data; exploratory)", "",
             "Each cell: the validation score (vision: held-out accuracy; LMs: nats/byte), then the largest loss "
             f"rise (spikes: the most the mean training loss of {CURVE_EVERY} steps rose above its minimum over the "
             f"preceding {SPIKE_WINDOW * CURVE_EVERY} steps). **Bold**: the chosen rate. Fair grids (since the "
             "decisive sweep): a norm whose choice sits at an edge of its grid gets the next rate beyond it (×3 steps), "
             "until its choice "
             f"is interior; a rate that diverges counts as tried; the ladder ends at {R.LR_MIN:g} and {R.LR_MAX:g}.",
             ""]
    if not tune:
        return lines + ["No tuning run has finished yet.", ""]
    cells: dict[tuple, dict[float, dict]] = defaultdict(dict)
    for r in tune:
        cells[(r["config"]["model"], r["config"]["norm"])][r["config"]["lr"]] = r
    lines += ["| family | norm | rates tried | first choice (3-rate grid) |", "|---|---|---|---|"]
    moved, edges = [], []
    for (model, norm), per_lr in sorted(cells.items(), key=lambda kv: (list(R.FAMILIES).index(kv[0][0]), kv[0][1])):
        grid = sorted(set(R.FAMILIES[model].lr_grid) | set(per_lr))
        chosen = R.chosen_lr_from({lr: per_lr.get(lr) for lr in grid})
        first = R.chosen_lr_from({lr: per_lr.get(lr) for lr in R.FAMILIES[model].lr_grid})
        row = []
        for lr in grid:
            r = per_lr.get(lr)
            if r is None:
                row.append(f"{lr:g}: pending")
                continue
            text = f"{lr:g}: " + (f"diverged at step {r['diverged_at']}" if "final" not in r else
                                  f"{metric(r):.4f}, rise {max_loss_rise(r['curve']):.3f}")
            row.append(f"**{text}**" if lr == chosen else text)
        lines.append(f"| {model} | {norm} | " + "; ".join(row) + f" | {'—' if first is None else f'{first:g}'} |")
        if chosen is not None and first is not None and not math.isnan(chosen) and chosen != first:
            moved.append(f"{model} {norm} {first:g} → {chosen:g}")
        if chosen is not None and not math.isnan(chosen) and chosen in (min(grid), max(grid)):
            edges.append(f"{model} {norm} ({chosen:g})")
    if moved:
        lines += ["", f"Choices the extended grids moved (the runs at the old rate are in the git history, not in the "
                  f"tables): {', '.join(moved)}."]
    if edges:
        lines += ["", f"Still at an edge of the rates tried: {', '.join(edges)}; such a grid is extended by the next "
                  "rate (pending) unless it reached the end of the ladder."]
    levels = byte_frequency_levels(results_root)
    stalled = stalled_rows(cells, levels)
    flat = flat_rows(cells, exclude={key for key, _ in stalled})
    if stalled:
        lines += ["", "No better than the bytes' frequencies at any rate, at this budget (the best score less than "
                  f"{STALL_MARGIN} nats/byte below the byte-frequency level, the loss of predicting every byte by its "
                  "frequency in the training text: " + ", ".join(f"{m} {v:.4f}" for m, v in sorted(levels.items()))
                  + "): " + ", ".join(f"{m} {n} (best {best:.4f})" for (m, n), best in stalled)
                  + ". Such a model has learned nothing that depends on its input by the end of the tuning budget; "
                  "the main table's longer runs show whether it does later."]
    if flat:
        lines += ["", f"The same score at every rate of the grid (within {FLAT_SPREAD}): {', '.join(flat)}. A score "
                  "that does not move with the rate is what a model reaches when it has learned only what does not "
                  "depend on its input (for an LM, the bytes' frequencies)."]
    named = {text.split()[1] for text in flat} | {norm for (_, norm), _ in stalled}
    if named & {"dyt", "derf"}:
        lines += ["", "DyT and Derf run at their default α₀ = 0.5 with the same rate grid as every norm. For LLMs, DyT's "
                  "authors also set α₀ per norm position and multiply the token embeddings by a learnable scalar "
                  "initialized to √width (their LLaMA code, `other_tasks/LLaMA/fms_fsdp/models/llama.py` in "
                  "jiachenzhu/DyT); this protocol does neither, so these rows show the peers at their defaults, not "
                  "tuned."]
        lines += dyt_diagnosis_lines(results_root)
    return lines + [""]


DYT_DIAGNOSIS = Path("reproduction") / "dyt_lm_diagnosis.json"  # written by scripts/diagnose_dyt_lm.py


DYT_POSITIONS = {"attention": "before attention", "mlp": "before the MLP", "final": "at the final norm"}


def dyt_recipe_words(recipe: dict) -> str:
    """The recipe the diagnosis recorded, in words: alpha_0 per norm position (positions sharing a value share it,
    in the order they first appear), then the embedding scale."""
    by_value: dict[float, list[str]] = {}
    for position, alpha in recipe.get("alpha_0", {}).items():
        by_value.setdefault(alpha, []).append(DYT_POSITIONS.get(position, position))
    alphas = ", ".join(f"{alpha:g} " + " and ".join(where) for alpha, where in by_value.items())
    scale = recipe.get("embedding_scale")
    return ", ".join(part for part in (f"α₀ {alphas}" if alphas else "",
                                       f"the embeddings times a learnable {scale}" if scale else "") if part) \
        or "recipe not recorded"


def dyt_diagnosis_lines(results_root: Optional[Path]) -> list[str]:
    """Why DyT's LMs stall, in numbers from the committed diagnosis (nothing when it is absent)."""
    diagnosis = _diagnosis(results_root)
    runs, parts, first_saturated, recipe_saturated = diagnosis.get("runs", {}), [], [], []
    for model in sorted({key.split(" / ")[0] for key in runs}):
        dyt, kept, base, recipe = (runs.get(f"{model} / {v}") for v in ("dyt", "dyt, final norm kept", "base",
                                                                         "dyt, authors' LLM recipe"))
        if not (dyt and kept and base):
            continue
        first_saturated += [next((r["step"] for r in dyt if (r["saturated"] or 0) > 0.99), None)]
        end = dyt[-1]
        recipe_saturated += [recipe[-1]["saturated"] > 0.99] if recipe else []
        with_recipe = "" if not recipe else (f"; with the authors' LLM recipe {recipe[-1]['train_loss']:.3f} "
                                             f"({recipe[-1]['saturated']:.0%} saturated)")
        parts.append(f"{model}: shared {end['shared_rms']:.3g} against varying {end['varying_rms']:.2g}, "
                     f"{end['saturated']:.0%} saturated, training loss {end['train_loss']:.3f}; with the final norm "
                     f"kept {kept[-1]['train_loss']:.3f}{with_recipe}; base norm {base[-1]['train_loss']:.3f}")
    if not parts:
        return []
    when = ("" if None in first_saturated else
            f" (more than 99% of its outputs saturated by step {max(first_saturated)})")
    return ["", f"Why DyT's LMs stall (`scripts/diagnose_dyt_lm.py`, seed {diagnosis['seed']}, lr {diagnosis['lr']:g}, "
            f"{diagnosis['steps']} steps; `results/{DYT_DIAGNOSIS.with_suffix('.md').as_posix()}`): the residual "
            "stream grows a part shared by every position, far larger than the part that varies with the input, and "
            f"the final DyT before the LM head saturates{when}. Its tanh then gives the same ±1 vector at every "
            "position, so the head can learn only the bytes' frequencies, and almost no gradient passes back "
            "through it. LayerNorm and RMSNorm divide that size away, and DyT in the blocks with the base norm kept "
            "as the final norm trains." + ("" if not recipe_saturated else " DyT with its authors' LLM recipe ("
            + dyt_recipe_words(diagnosis.get("recipe", {})) + ") "
            + ("saturates the same way at this rate." if all(recipe_saturated) else "does not saturate everywhere; "
               "see its numbers.")) + " Input of the final norm at the last step, as "
            "root-mean-squares: "
            + "; ".join(parts) + "."]


FLAT_SPREAD = 0.005  # largest minus smallest score over the grid, below which a norm did not respond to the rate
STALL_MARGIN = 0.01  # nats/byte: the LMs' equivalence bound; a best score this close to the byte-frequency level


def byte_frequency_levels(results_root: Optional[Path]) -> dict[str, float]:
    """Each LM's byte-frequency level on the tuning runs' validation windows, from the committed diagnosis."""
    return {m: v["tune"] for m, v in _diagnosis(results_root).get("byte_frequency_level", {}).items()}


def _diagnosis(results_root: Optional[Path]) -> dict:
    """The committed DyT diagnosis ({} when it is absent)."""
    path = None if results_root is None else Path(results_root) / DYT_DIAGNOSIS
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def stalled_rows(cells: dict[tuple, dict[float, dict]], levels: dict[str, float]) -> list[tuple[tuple, float]]:
    """((model, norm), best score) for each LM whose best finished tuning score is not STALL_MARGIN below its
    byte-frequency level: at no rate did it learn more than the bytes' frequencies."""
    out = []
    for (model, norm), per_lr in sorted(cells.items()):
        scores = [s for s in (metric(r) for r in per_lr.values()) if s is not None]
        if model in levels and scores and min(scores) >= levels[model] - STALL_MARGIN:
            out.append(((model, norm), min(scores)))
    return out


def flat_rows(cells: dict[tuple, dict[float, dict]], exclude: frozenset = frozenset()) -> list[str]:
    """``model norm (low-high)`` for each (model, norm) not in ``exclude`` whose runs finished at every rate with
    scores within FLAT_SPREAD of each other."""
    out = []
    for (model, norm), per_lr in sorted(cells.items()):
        if (model, norm) in exclude:
            continue
        scores = [metric(r) for r in per_lr.values()]
        if len(scores) >= len(R.FAMILIES[model].lr_grid) and None not in scores and \
                max(scores) - min(scores) < FLAT_SPREAD:
            out.append(f"{model} {norm} ({min(scores):.4f}-{max(scores):.4f})")
    return out
