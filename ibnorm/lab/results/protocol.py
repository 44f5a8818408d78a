"""The protocol as run, where the sweep stands, the minimum quality and the compute: the page's frame."""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Optional

from .. import reproduce as R
from ..models import get_preset
from ..tasks import task_kind
from .common import _ms, by_seed


def protocol_section() -> list[str]:
    lines = ["## Protocol (fixed before the runs, but for the two changes disclosed under learning rate and generalization)", "",
             "Source of truth: `ibnorm/lab/reproduce.py`; this section is generated from it.", "",
             "| family | base norm | steps | batch | tokens or epochs | evaluation | tuning: steps, split |",
             "|---|---|---|---|---|---|---|"]
    for name, fam in R.FAMILIES.items():
        s, kind = fam.settings, task_kind(name)
        if kind.name == "lm":
            amount = f"{fam.steps * s['batch_size'] * s['context'] / 1e6:.1f}M bytes"
            ev = f"validation text, {s['eval_batches'] * s['batch_size'] * s['context']:,} bytes, each once (nats/byte)"
            tune = f"{fam.tune_steps}, last {fam.tune_settings['holdout']:,} training bytes"
        else:
            amount = f"{fam.steps * s['batch_size'] / 60000:.1f} epochs"
            ev = "test set, all 10,000 images"
            tune = f"{fam.tune_steps}, {fam.tune_settings['holdout']:,} training images held out"
        lines.append(f"| {name} | {get_preset(name).base_norm} | {fam.steps} | {s['batch_size']} | {amount} | {ev} | {tune} |")
    lines += ["",
              f"- Optimizer: AdamW (beta2 0.95, weight decay {R._VISION['weight_decay']} vision / {R._LM['weight_decay']} LMs "
              f"on matrices only), gradient clipping at 1.0, linear warmup of {R._VISION['warmup_steps']} steps, cosine decay to 0.1x. The same "
              "for every norm; every run on one thread.",
              "- Learning rate: chosen per norm from its family's grid ("
              + "; ".join(f"{m} {', '.join(f'{x:g}' for x in f.lr_grid)}" for m, f in R.FAMILIES.items())
              + f") by the validation score of one seed ({R.TUNE_SEED}) at the tuning budget; ties go to the lower "
              "rate. The grid was first 0.001, 0.003, 0.01 for every family. Its first 28 tuning runs chose the top for "
              "all six ResNet norms; of the three ViT norms with all three rates in, two chose the bottom and one the "
              "middle, and 0.01 was the worst rate for each. So, before any main-table run, the vision grids moved one "
              "step; the runs at the dropped rates are in the git history, not in the tables.",
              f"- Fair grids (the decisive sweep, issue 25): a norm whose chosen rate sits at an edge of its grid gets "
              f"the next rate beyond it (×3 steps), until its choice is interior, within {R.LR_MIN:g}-{R.LR_MAX:g}; a "
              "rate that diverges counts as tried. Runs at a choice that moved are in the git history, not in the "
              "tables. The strength ablation adds twice its largest strength while that strength is the best.",
              f"- Seeds: {', '.join(map(str, R.MAIN_SEEDS))} for the main table's base norm and ops, "
              f"{', '.join(map(str, R.SEEDS))} for the peers and every other stage (initialization and batch order); "
              f"the confirmatory test's {R.CONFIRM_SEEDS[0]}-{R.CONFIRM_SEEDS[-1]}. Norms: {', '.join(R.MAIN_NORMS)}; "
              "IBNorm ops at their default strength 0.5.",
              "- Verdict rule: the paired difference to the base norm (same seed). The main and confirmatory tables: "
              "paired t, Holm-adjusted, with TOST at the smallest effect of interest (their sections state it). The "
              "other tables: a 95% Student-t interval; \"better\" or \"worse\" only when it excludes 0, otherwise "
              "\"no detectable difference\"; in a score, \"better\" or \"worse\" adds \"by less than\" the "
              "smallest effect of interest when the whole interval lies inside it (systematic, but too small to "
              "matter; the rules count the verdict alone).",
              f"- Generalization: the same protocol on a fixed subset of {R.GENERALIZATION_SUBSET:,} training images, "
              + ", ".join(f"{m} {R.FAMILIES[m].generalization_steps} steps" for m in R.VISION_FAMILIES)
              + "; norms " + ", ".join(R.GENERALIZATION_NORMS) + ". vit-mini first trained 4000 steps here: its base "
              "norm reached train accuracy 0.981-0.993 over the three seeds (mean 0.987), short of the 0.99 that shows "
              "it overfits, so before any other norm's vit-mini run of this stage finished, its steps became 6000; "
              "the three 4000-step runs are in the git history (commits 59255fa and f38ae95), not in the tables.",
              f"- Ablations: {', '.join(R.ABLATION_MODELS)}, seeds {', '.join(map(str, R.SEEDS))}, at the tuning budget "
              "(where the rates were chosen), scored like the main table; each variant at its op's chosen rate.",
              "- Post-hoc conversion: each main-table base model, converted to "
              + " or ".join(f"`{n}`" for n in R.POSTHOC_NORMS[1:])
              + f" (the base norm itself, or within 1%, at the start) or kept, fine-tuned for {R.POSTHOC_FRACTION:.0%} more steps at "
              f"{R.POSTHOC_LR_SCALE}x the base norm's chosen rate (fresh warmup and cosine).", ""]
    return lines


def status_lines(todo: list, waiting: int, runs: Optional[list[dict]] = None,
                 hours: Optional[dict[str, float]] = None) -> list[str]:
    """Where the sweep stands, first thing on the page: how many of the planned runs are in, which stages wait, the
    projected single-thread hours of what is left, and the commit(s) the runs since the decisive sweep ran."""
    if not todo and not waiting:
        return ["**Status: complete.** Every planned run is in.", ""]
    left = defaultdict(int)
    for job in todo:
        left[job.stage] += 1
    parts = [f"{stage} {n}" for stage, n in sorted(left.items(), key=lambda kv: R.STAGES.index(kv[0]))]
    parts += [f"{waiting} that wait on an earlier result" if hours is not None else
              f"{waiting} that wait on a tuning result"] if waiting else []
    lines = [f"**Status: in progress.** Still to run: {', '.join(parts)}. A verdict marked pending waits on them; "
             "the others no longer change."]
    if hours:
        lines[0] += (" Projected single-thread hours (`ibnorm reproduce --dry-run`): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in hours.items()) + f"; {sum(hours.values()):.1f} in all.")
    commits = defaultdict(int)
    for r in runs or []:
        c = r.get("environment", {}).get("code_commit")
        if c:
            commits[c] += 1
    if commits:
        lines[0] += " The sweep's code: " + ", ".join(f"commit {c} ({n} runs)" for c, n in sorted(commits.items())) + "."
    return lines + [""]


def quality_section(runs: dict[str, list[dict]]) -> list[str]:
    """The protocol's minimum quality, as measured: the comparison must be between trained models."""
    main = by_seed([r for r in runs["reproduction"] if r.get("stage") == "main"])
    gen_train = by_seed(runs["generalization"], lambda r: r["final"].get("train_acc") if "final" in r else None)
    lines = ["## Minimum quality (protocol) against what was measured", "",
             "| requirement | measured | met |", "|---|---|---|"]
    for model, floor in (("vit-mini", 0.85), ("resnet-mini", 0.90)):
        v = list(main.get((model, "base"), {}).values())
        met = "pending" if not v else ("yes" if statistics.fmean(v) >= floor else "**no**")
        lines.append(f"| {model} base norm: test accuracy ≥ {floor} | {_ms(v, 4)} | {met} |")
    for model in R.LM_FAMILIES:
        s = R.FAMILIES[model].settings
        tokens = R.FAMILIES[model].steps * s["batch_size"] * s["context"]
        lines.append(f"| {model}: at least 4M training tokens | {tokens:,} | {'yes' if tokens >= 4_000_000 else '**no**'} |")
    for model in R.VISION_FAMILIES:
        v = list(gen_train.get((model, "base"), {}).values())
        met = "pending" if not v else ("yes" if min(v) >= 0.99 else "**no**")
        lines.append(f"| {model} base norm on the 5k subset: train accuracy ≥ 0.99 (overfits) | {_ms(v, 4)} | {met} |")
    return lines + [""]


def compute_section(all_runs: list[dict], pending: int, waiting: int) -> list[str]:
    wall = sum(r.get("wall_time_s", 0.0) for r in all_runs)
    timed = [r for r in all_runs if r.get("cpu_time_s") is not None]
    cpu = sum(r["cpu_time_s"] for r in timed)
    caps = sorted({r["environment"]["cpu_capability"] for r in all_runs if "environment" in r})
    measured = (f"; the {len(timed)} runs that recorded their process CPU time used {cpu / 3600:.1f} CPU-hours against "
                f"{sum(r['wall_time_s'] for r in timed) / 3600:.1f} hours of their wall time") if timed else ""
    return ["## Compute", "",
            f"{len(all_runs)} runs finished: {wall / 3600:.1f} hours of training wall time, summed over runs of one "
            "thread each (two at once on two cores, slowed by whatever else ran on the machine, so an upper bound on "
            f"the CPU time){measured}. CPU capability {', '.join(caps) or '—'}; no GPU. {pending} runs are ready to "
            f"train and {waiting} more wait on a tuning result (`ibnorm reproduce` trains them).", ""]
