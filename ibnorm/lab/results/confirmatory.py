"""The confirmatory test of claim 1: one IBNorm configuration per family, registered before its runs, against the
base norm on seeds that chose nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import reproduce as R
from .common import _ms, by_seed
from .decisive import DECISION_HEADER, decide_family, decision_cells

RULE = ("The rule that picks the configuration (fixed before the pick): per family, every IBNorm configuration with "
        f"paired seeds {', '.join(map(str, R.SEEDS))} against the base norm is a candidate: the three ops at strength "
        f"{R.REFERENCE_STRENGTH:g} and with learnable strength (main-table budget, against the main table's base "
        "norm), and on the ablation families every strength of the extended strength ablation (tuning budget, against "
        "the ablation's own base-norm runs). The candidate with the largest mean paired improvement wins; its rate is "
        "tuned by the same grid rule as every norm. The test: paired t, two-sided, α = 0.05, Holm over the 4 families, "
        f"and TOST at the smallest effect of interest; seeds {R.CONFIRM_SEEDS[0]}-{R.CONFIRM_SEEDS[-1]}, at the main "
        "table's budget (the base norm's seeds 3-7 are the main table's).")


def confirmatory_section(runs: dict[str, list[dict]], results_root: Optional[Path]) -> tuple[list[str], dict, dict]:
    """The registration and, once its runs are in, the test; returns the lines, (model, norm) -> (95% paired
    interval, verdict) and (model, norm) -> decision, for each family whose paired seeds are all in."""
    lines = ["## Confirmatory test (claim 1; confirmatory)", "", RULE, ""]
    reg = R.registered(results_root) if results_root is not None else None
    if reg is None:
        lines += ["**Not registered yet.** `results/confirmatory/PREREGISTRATION.md` is committed, alone, once the "
                  "exploratory runs that pick the configuration are in; no confirmatory run starts before it. The "
                  "candidates so far (mean paired improvement over the base norm, in the family's metric; positive is "
                  "better):", ""]
        if results_root is not None:
            lines += ["| family | candidates | pick |", "|---|---|---|"]
            for model in R.FAMILIES:
                cands = R.confirmatory_candidates(results_root, model)
                text = "waiting on exploratory runs" if cands is None else "; ".join(
                    f"`{k}` {v:+.4f}" for k, v in sorted(cands.items(), key=lambda kv: -kv[1]))
                pick = "—" if not cands else f"`{max(cands, key=lambda k: cands[k])}`"
                lines.append(f"| {model} | {text} | {pick} |")
            lines.append("")
        return lines, {}, {}
    lines += ["Registered in `results/confirmatory/PREREGISTRATION.md` (the commit order proves it came first):", "",
              "| family | configuration | lr |", "|---|---|---|"]
    lines += [f"| {m} | `{e['norm']}` | {float(e['lr']):g} |" for m, e in reg.items()] + [""]
    main = by_seed([r for r in runs["reproduction"] if r.get("stage") == "main"])
    conf = by_seed(runs.get("confirmatory", []))
    pairs, shown = {}, []
    for model, entry in reg.items():
        norm = entry["norm"]
        seeds = set(R.CONFIRM_SEEDS)
        pick = {s: v for s, v in {**main.get((model, norm), {}), **conf.get((model, norm), {})}.items() if s in seeds}
        base = {s: v for s, v in {**main.get((model, "base"), {}), **conf.get((model, "base"), {})}.items() if s in seeds}
        pairs[(model, norm)] = (pick, base)
        shown.append((model, norm, pick, base))
    decisions = decide_family(pairs)
    lines += [f"| family | configuration | paired seeds | score | base | {DECISION_HEADER} |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, norm, pick, base in shown:
        d = decisions.get((model, norm))
        n = len(set(pick) & set(base))
        lines.append(f"| {model} | `{norm}` | {n}/{len(R.CONFIRM_SEEDS)} | {_ms(list(pick.values()), 4)} | "
                     f"{_ms(list(base.values()), 4)} | " + " | ".join(decision_cells(d, model)) + " |")
    done = {k: d for k, d in decisions.items() if d.p95.n == len(R.CONFIRM_SEEDS)}
    lines += ["", "A family's verdict counts toward claim 1 once all its paired seeds are in "
              f"({len(done)} of {len(reg)} so far).", ""]
    return lines, {k: (d.p95, d.verdict) for k, d in done.items()}, done
