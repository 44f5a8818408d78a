"""Post-hoc conversion of a trained base model."""
from __future__ import annotations

import statistics
from typing import Iterable

from .. import reproduce as R
from ..tasks import task_kind
from .common import _ms, by_seed, score_verdict, versus


def posthoc_section(runs: list[dict], retrained: Iterable[dict] = ()) -> list[str]:
    """``retrained``: the results of parents trained again for this stage (their weights were not kept at the main
    table's run); each is that seed's parent instead of the main-table run, which it need not reproduce."""
    post = [r for r in runs if r.get("stage") == "posthoc"]
    lines = ["## Post-hoc conversion of a trained model", ""]
    if not post:
        return lines + ["No run of this stage has finished yet.", ""]
    values = by_seed(post)
    # Fine-tuning alone may move the score, which is why the base norm fine-tuned the same way is the reference, and
    # the parent's column shows how far it moved.
    main = by_seed([r for r in runs if r.get("stage") == "main"])
    again = by_seed(list(retrained))
    parents = {key: {**main.get(key, {}), **again.get(key, {})} for key in set(main) | set(again)}
    lines += ["*Exploratory.* Each main-table base model, fine-tuned as itself (base) or converted first; Δ paired by "
              "seed. Power at 1.0 and tanh at 0.05 start as the base model (or within 1%), so a difference there comes "
              "from the fine-tuning. Tanh at 0.5 and the registered confirmatory configuration start away from it: "
              "the drop at conversion is the converted model's score before any fine-tuning against its parent, "
              "and the recovery is the score after it (the ResNet's batch norms recompute their running statistics "
              f"over {R.POSTHOC_RECALIBRATE.get('resnet-mini', 0)} training batches first).", ""]
    for (model, norm), seeds in sorted(again.items(), key=lambda kv: list(R.FAMILIES).index(kv[0][0])):
        kept = main.get((model, norm), {})
        same = [s for s in sorted(seeds) if kept.get(s) == seeds[s]]
        moved = [f"seed {s} {kept[s]:.4f} → {seeds[s]:.4f}" for s in sorted(seeds) if s in kept and s not in same]
        lines.append(f"- {model}: its parents were trained again here (their weights had not been kept), with the "
                     f"main table's config; the parent's column uses what the retrained parents score. "
                     + (f"Seeds {', '.join(map(str, same))} reproduced the main-table score exactly. " if same else "")
                     + (f"Not reproduced: {'; '.join(moved)}." if moved else ""))
    lines += ([""] if again else []) + [
        "| family | fine-tuned as | seeds | drop at conversion vs the parent [95% CI] | score | "
        "Δ vs base fine-tuned [95% CI] | verdict | Δ vs the parent before fine-tuning [95% CI] | "
        "learned strength (mean over layers) |",
        "|---|---|---|---|---|---|---|---|---|"]
    at_start = by_seed(post, lambda r: r["at_start"][task_kind(r["config"]["model"]).metric] if r.get("at_start") else None)
    strengths = {(r["config"]["model"], r["config"]["norm"], r["config"]["seed"]): r.get("learned_strength", {}) for r in post}
    for (model, norm), v in values.items():
        kind = task_kind(model)
        paired, delta, verdict = versus(v, None if norm == "base" else values.get((model, "base"), {}),
                                        kind.higher_is_better)
        learned = [statistics.fmean(s.values()) for (m, n, _), s in strengths.items() if (m, n) == (model, norm) and s]
        _, from_parent, _ = versus(v, parents.get((model, "base"), {}), kind.higher_is_better)
        drop = "—"
        if (model, norm) in at_start:
            _, drop, _ = versus(at_start[(model, norm)], parents.get((model, "base"), {}), kind.higher_is_better)
        lines.append(f"| {model} | {norm} | {len(v)} | {drop} | {_ms(list(v.values()), 4)} | {delta} | "
                     f"{score_verdict(paired, verdict, model)} | {from_parent} | {_ms(learned, 4) if learned else '—'} |")
    return lines + [""]
