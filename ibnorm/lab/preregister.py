"""``ibnorm preregister``: write the confirmatory test's registration from the exploratory run files, once the rule
can pick every family's configuration and that configuration's rate is tuned.

The file is committed alone, before any confirmatory run (the planner starts none without it); it never changes
once its runs start, and a change is a new file (``PREREGISTRATION-2.md``) that gives its reason.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..atomic import atomic_write_text
from . import reproduce as R
from .tasks import task_kind


def missing(results_root: Path) -> list[str]:
    """What the registration still waits on, per family (empty: ready)."""
    out = []
    for model in R.FAMILIES:
        pick = R.confirmatory_pick(results_root, model)
        if pick is None:
            out.append(f"{model}: the exploratory runs the rule weighs")
        elif R.chosen_lr(results_root, model, pick) is None:
            out.append(f"{model}: the tuning of `{pick}`")
    return out


def registration(results_root: Path, commit: str = "") -> tuple[str, dict]:
    """The registration's text and its machine-readable entries ({model: {"norm", "lr"}})."""
    root = Path(results_root)
    entries, cand_lines, lr_lines = {}, [], []
    for model in R.FAMILIES:
        cands = R.confirmatory_candidates(root, model)
        pick = max(cands, key=lambda k: cands[k])
        lr = R.chosen_lr(root, model, pick)
        if lr is None or math.isnan(lr):
            raise ValueError(f"{model}: `{pick}` has no tuned rate (it diverged at every rate tried)")
        entries[model] = {"norm": pick, "lr": lr}
        kind = task_kind(model)
        for name, gain in sorted(cands.items(), key=lambda kv: -kv[1]):
            budget = "tuning budget, ablation" if "strength=" in name else "main budget"
            cand_lines.append(f"| {model} | `{name}` | {gain:+.4f} | {budget} | {'**picked**' if name == pick else ''} |")
        grid = R.lr_grid(root, model, pick)[0]
        scores = []
        for rate in grid:
            r = R.read_result(R._tune_job(model, pick, rate).result_path(root))
            scores.append(f"{rate:g}: " + ("diverged" if "final" not in r else f"{r['final'][kind.metric]:.4f}"))
        lr_lines.append(f"| {model} | `{pick}` | **{lr:g}** | {'; '.join(scores)} |")
    bounds = ", ".join(f"{k}: ±{v}" for k, v in R.EQUIVALENCE_TEXT.items())
    text = "\n".join([
        "# Pre-registration: the confirmatory test of claim 1", "",
        f"Written by `ibnorm preregister` on {time.strftime('%Y-%m-%d', time.gmtime())} from the exploratory run files "
        f"{'at commit ' + commit + ' ' if commit else ''}before any confirmatory run, and committed alone: the commit "
        "order proves it came first. It does not change once its runs start; a change is a new file "
        "(`PREREGISTRATION-2.md`, ...) that gives its reason, and the latest one rules.", "",
        "## Claim", "",
        "The paper's claim 1: IBNorm outperforms BatchNorm, LayerNorm and RMSNorm on LLaMA, GPT-2, ResNet and ViT. "
        "Hypothesis, per family: the registered IBNorm configuration beats the family's base norm (resnet-mini: "
        "BatchNorm, vit-mini and gpt2-mini: LayerNorm, llama-mini: RMSNorm) in the main table's metric at the main "
        "table's budget; the null is no difference.", "",
        "## The rule that picked the configuration (fixed in `ibnorm/lab/reproduce.py` before the pick)", "",
        f"Per family, every IBNorm configuration with paired seeds {', '.join(map(str, R.SEEDS))} against the base "
        f"norm is a candidate: the three ops at strength {R.REFERENCE_STRENGTH:g} and with learnable strength (main-table "
        "budget, against the main table's base norm), and on the ablation families (llama-mini, vit-mini) every "
        "strength of the extended strength ablation (tuning budget, against the ablation's own base-norm runs). "
        "The candidate with the largest mean paired improvement wins. Its learning rate is tuned by the grid rule "
        "every norm follows (the family's grid, extended at an edge until the choice is interior; seed "
        f"{R.TUNE_SEED}, tuning budget, a validation split carved from the training data).", "",
        "| family | candidate | mean paired improvement over the base norm | where | |", "|---|---|---|---|---|",
        *cand_lines, "",
        "## The registered configuration and its rate", "",
        "| family | configuration | lr | tuning scores (validation) |", "|---|---|---|---|", *lr_lines, "",
        "## The test", "",
        f"- Seeds {R.CONFIRM_SEEDS[0]}-{R.CONFIRM_SEEDS[-1]} (8 pairs), disjoint from the seeds "
        f"{R.SEEDS[0]}-{R.SEEDS[-1]} that chose the configuration; the base norm's seeds 3-7 are the main table's, "
        "8-10 are run for this test. The main table's budget, data, schedule and evaluation.",
        "- Per family: the paired t-test of the seed-by-seed difference, two-sided, α = 0.05, with the p-values "
        "Holm-adjusted over the 4 families.",
        f"- Equivalence: TOST at the smallest effect of interest ({bounds}), i.e. the 90% interval of the mean "
        "difference inside ± the bound.",
        "- Verdict per family: better or worse when the adjusted p < 0.05; otherwise equivalent when TOST holds; "
        "otherwise inconclusive.",
        "- Claim 1: supported when every family is better; not supported when any family is worse or equivalent; "
        "otherwise inconclusive.", "",
        "## Machine-readable (the planner reads this block)", "",
        "```json", json.dumps({"registered": entries}, indent=1), "```", ""])
    return text, entries


def write(results_root: Path, commit: str = "") -> Path:
    root = Path(results_root)
    if R.registered(root) is not None:
        raise ValueError(f"{root / R.PREREGISTRATION.parent} already holds a registration: a change is a new file "
                         "(PREREGISTRATION-2.md) that gives its reason, written by hand")
    wait = missing(root)
    if wait:
        raise ValueError("the registration waits on " + "; ".join(wait))
    text, _ = registration(root, commit)
    path = root / R.PREREGISTRATION
    atomic_write_text(path, text)
    return path
