"""Seeds of the same model and norm merged: per layer and step, the mean and spread of the information
quantities, and the final-step IB value of every norm as a paired difference to the base norm."""
from __future__ import annotations

import statistics
from collections import defaultdict

QUANTITIES = ("I_XT", "I_TY", "IB")
SUMMARY_COLUMNS = ["norm", "seeds", "index", "layer", "step", "I_XT", "I_XT_sd", "I_TY", "I_TY_sd", "IB", "IB_sd",
                   "dIB", "dIB_sd", "contraction"]


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _float(v) -> float | None:
    return None if v in ("", None) else float(v)


def group_by_norm(runs: list[list[dict]]) -> dict[str, dict[int, list[dict]]]:
    """``{"MODEL NORM": {seed: rows}}`` from each run's rows, by their ``model``, ``norm`` and ``seed`` fields."""
    groups: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    for rows in runs:
        name, seed = f"{rows[0]['model']} {rows[0]['norm']}", int(rows[0]["seed"])
        if seed in groups[name]:
            raise ValueError(f"two runs of {name!r} with seed {seed}; pass each run directory once")
        groups[name][seed] = rows
    return dict(groups)


def mean_rows(seeds: dict[int, list[dict]]) -> list[dict]:
    """One row per (layer, step) recorded by every seed: means, with ``*_sd`` and ``seeds``."""
    cells: dict[tuple[int, str, int], list[dict]] = defaultdict(list)
    for rows in seeds.values():
        for r in rows:
            cells[(r["index"], r["layer"], r["step"])].append(r)
    out = []
    for (index, layer, step), rs in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        if len(rs) != len(seeds):
            continue  # a step not every seed recorded would mix different run lengths
        row = dict(rs[0], seeds=len(rs))
        for q in QUANTITIES:
            vals = [float(r[q]) for r in rs]
            row[q], row[q + "_sd"] = statistics.fmean(vals), _sd(vals)
        for q in ("contraction", "strength"):
            vals = [v for v in (_float(r.get(q)) for r in rs) if v is not None]
            row[q] = statistics.fmean(vals) if vals else ""
        out.append(row)
    return out


def final_rows(rows: list[dict]) -> dict[int, dict]:
    last = max(r["step"] for r in rows)
    return {r["index"]: r for r in rows if r["step"] == last}


def summary_table(groups: dict[str, dict[int, list[dict]]], base: str | None = None) -> tuple[list[dict], str]:
    """Final-step rows per norm and layer (mean ± sd over seeds, and the IB value's paired difference to
    ``base``, matched by seed), as CSV rows and a markdown report."""
    names = list(groups)
    base = base if base in groups else next((n for n in names if n.endswith(" base")), names[0])
    base_final = {seed: final_rows(rows) for seed, rows in groups[base].items()}
    table, lines = [], []
    lines += [f"Final recorded step; mean ± sd over seeds; ΔIB: IB minus {base!r}'s IB at the same layer, paired "
              "by seed (mean ± sd of the differences; '-' where no seed pairs).", "",
              "| norm | seeds | layer | I(X;T) | I(T;Y) | IB | ΔIB vs base | contraction |",
              "|---|---|---|---|---|---|---|---|"]
    for name in names:
        seeds = groups[name]
        finals = {seed: final_rows(rows) for seed, rows in seeds.items()}
        indices = sorted(set.intersection(*(set(f) for f in finals.values())))
        for ix in indices:
            rs = [finals[s][ix] for s in finals]
            vals = {q: [float(r[q]) for r in rs] for q in QUANTITIES}
            deltas = [float(finals[s][ix]["IB"]) - float(base_final[s][ix]["IB"])
                      for s in finals if s in base_final and ix in base_final[s]]
            contraction = [v for v in (_float(r.get("contraction")) for r in rs) if v is not None]
            row = {"norm": name, "seeds": len(rs), "index": ix, "layer": rs[0]["layer"], "step": rs[0]["step"]}
            for q in QUANTITIES:
                row[q], row[q + "_sd"] = statistics.fmean(vals[q]), _sd(vals[q])
            row["dIB"] = statistics.fmean(deltas) if deltas and name != base else ""
            row["dIB_sd"] = _sd(deltas) if deltas and name != base else ""
            row["contraction"] = statistics.fmean(contraction) if contraction else ""
            table.append(row)
            fmt = lambda q: f"{row[q]:.3f} ± {row[q + '_sd']:.3f}"  # noqa: E731
            delta = "-" if row["dIB"] == "" else f"{row['dIB']:+.3f} ± {row['dIB_sd']:.3f}"
            contr = "" if row["contraction"] == "" else f"{row['contraction']:.2f}"
            lines.append(f"| {name} | {len(rs)} | {ix} {row['layer']} | {fmt('I_XT')} | {fmt('I_TY')} | {fmt('IB')} | "
                         f"{delta} | {contr} |")
    lines += ["", "Mean IB over all recorded layers (the network as a whole), same pairing:", "",
              "| norm | seeds | mean IB over layers | Δ vs base |", "|---|---|---|---|"]
    base_means = {s: statistics.fmean(float(r["IB"]) for r in f.values()) for s, f in base_final.items()}
    for name in names:
        means = {s: statistics.fmean(float(r["IB"]) for r in final_rows(rows).values()) for s, rows in groups[name].items()}
        deltas = [means[s] - base_means[s] for s in means if s in base_means]
        delta = "-" if name == base or not deltas else f"{statistics.fmean(deltas):+.3f} ± {_sd(deltas):.3f}"
        vals = list(means.values())
        lines.append(f"| {name} | {len(vals)} | {statistics.fmean(vals):.3f} ± {_sd(vals):.3f} | {delta} |")
    return table, "\n".join(lines) + "\n"
