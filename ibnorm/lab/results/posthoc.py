"""Post-hoc conversion of a trained base model."""
from __future__ import annotations

import statistics
from typing import Iterable

from .. import reproduce as R
from ..tasks import task_kind
from .common import _ms, by_seed, versus


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
    lines += ["Each main-table base model, fine-tuned as itself (base) or converted first; Δ paired by seed. The "
              "converted models start as the base model (or within 1%), so a difference comes from the fine-tuning.", ""]
    for (model, norm), seeds in sorted(again.items(), key=lambda kv: list(R.FAMILIES).index(kv[0][0])):
        kept = main.get((model, norm), {})
        same = [s for s in sorted(seeds) if kept.get(s) == seeds[s]]
        moved = [f"seed {s} {kept[s]:.4f} → {seeds[s]:.4f}" for s in sorted(seeds) if s in kept and s not in same]
        lines.append(f"- {model}: its parents were trained again here (their weights had not been kept), with the "
                     f"main table's config; the parent's column uses what the retrained parents score. "
                     + (f"Seeds {', '.join(map(str, same))} reproduced the main-table score exactly. " if same else "")
                     + (f"Not reproduced: {'; '.join(moved)}." if moved else ""))
    lines += ([""] if again else []) + [
        "| family | fine-tuned as | seeds | score | Δ vs base fine-tuned [95% CI] | verdict | "
        "Δ vs the parent before fine-tuning [95% CI] | learned strength (mean over layers) |",
        "|---|---|---|---|---|---|---|---|"]
    strengths = {(r["config"]["model"], r["config"]["norm"], r["config"]["seed"]): r.get("learned_strength", {}) for r in post}
    for (model, norm), v in values.items():
        kind = task_kind(model)
        _, delta, verdict = versus(v, None if norm == "base" else values.get((model, "base"), {}),
                                   kind.higher_is_better)
        learned = [statistics.fmean(s.values()) for (m, n, _), s in strengths.items() if (m, n) == (model, norm) and s]
        _, from_parent, _ = versus(v, parents.get((model, "base"), {}), kind.higher_is_better)
        lines.append(f"| {model} | {norm} | {len(v)} | {_ms(list(v.values()), 4)} | {delta} | {verdict} | "
                     f"{from_parent} | {_ms(learned, 4) if learned else '—'} |")
    return lines + [""]
