"""``ibnorm report``: ``RESULTS.md``, every ``runs.csv`` and the figures, rebuilt from the committed run files.

Nothing here trains or measures: it reads ``results/<area>/runs/*.json`` (written by :mod:`ibnorm.lab.reproduce`)
and applies the rules fixed in advance. Output is a pure function of those files, so a clean clone rebuilds
``RESULTS.md`` and the CSVs byte for byte (a test checks it).

Rules (stated in ``RESULTS.md`` too):
- a norm is compared with its family's base norm seed by seed; the 95% Student-t interval of the mean
  difference decides "better"/"worse" only when it excludes 0 (:mod:`ibnorm.lab.stats`);
- the largest loss rise of a run is the largest amount by which the mean training loss of 10 steps rises above
  its minimum over the preceding 100 steps: a spike measure for claim 4.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from ..atomic import atomic_write_text
from ..ops import COMPRESSIONS
from . import reproduce as R
from .models import get_preset
from .records import save_figure, write_csv
from .stats import Paired, paired
from .tasks import task_kind

AREAS = ("reproduction", "generalization", "ablations", "info")
CSV_COLUMNS = ["stage", "tag", "model", "norm", "seed", "lr", "steps", "eval_set", "val_loss", "val_bpb", "test_acc",
               "test_loss", "holdout_acc", "holdout_loss", "train_acc", "diverged_at", "max_loss_rise", "wall_time_s"]
INFO_COLUMNS = ["model", "norm", "seed", "index", "layer", "type", "dim", "I_XT", "I_TY_probe", "probe_ce", "IB", "beta",
                "contraction"]
SPIKE_WINDOW = 10  # curve points (of 10 steps each) behind the running minimum of the largest-rise measure
COMMAND = "ibnorm report"


# ---- reading ----------------------------------------------------------------------------------------------------

def load_runs(results_root: Path) -> dict[str, list[dict]]:
    """Every committed result, per area, in a fixed order."""
    out = {}
    for area in AREAS:
        files = sorted((Path(results_root) / area / "runs").glob("*.json"))
        out[area] = sorted((json.loads(f.read_text()) for f in files), key=_order)
    return out


def _order(r: dict) -> tuple:
    c = r["config"]
    return (R.STAGES.index(r["stage"]) if r.get("stage") in R.STAGES else 99, r.get("tag", ""),
            list(R.FAMILIES).index(c["model"]) if c["model"] in R.FAMILIES else 99, c["norm"], c["seed"], c["lr"])


def max_loss_rise(curve: list) -> float:
    """The largest rise of the 10-step mean training loss above its minimum over the preceding 100 steps."""
    losses = [v for _, v in curve]
    rise = 0.0
    for j in range(1, len(losses)):
        rise = max(rise, losses[j] - min(losses[max(0, j - SPIKE_WINDOW):j]))
    return rise


def eval_set(r: dict) -> str:
    c = r["config"]
    if c.get("holdout"):
        return "holdout"
    return "validation" if task_kind(c["model"]).name == "lm" else "test"


def csv_row(r: dict) -> dict:
    c, f = r["config"], r.get("final") or {}
    where, vision = eval_set(r), task_kind(c["model"]).name == "vision"
    row = {"stage": r.get("stage", ""), "tag": r.get("tag", ""), "model": c["model"], "norm": c["norm"],
           "seed": c["seed"], "lr": c["lr"], "steps": c["steps"], "eval_set": where,
           "diverged_at": r.get("diverged_at", ""), "max_loss_rise": round(max_loss_rise(r.get("curve", [])), 6),
           "wall_time_s": round(r["wall_time_s"], 1) if "wall_time_s" in r else ""}
    if f:
        if not vision:
            row.update(val_loss=f["val_loss"], val_bpb=f["val_loss"] / math.log(2))
        elif where == "holdout":
            row.update(holdout_acc=f["val_acc"], holdout_loss=f["val_loss"])
        else:
            row.update(test_acc=f["val_acc"], test_loss=f["val_loss"], train_acc=f.get("train_acc", ""))
    return row


# ---- statistics over seeds ----------------------------------------------------------------------------------------

def metric(r: dict) -> Optional[float]:
    """The headline metric of a finished run (vision: test accuracy; LMs: validation nats per byte)."""
    if "final" not in r:
        return None
    return r["final"][task_kind(r["config"]["model"]).metric]


def by_seed(runs: list[dict], value=metric) -> dict[tuple, dict[int, float]]:
    """(model, norm) -> {seed: value} over finished runs."""
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in runs:
        v = value(r)
        if v is not None:
            out[(r["config"]["model"], r["config"]["norm"])][r["config"]["seed"]] = v
    return out


def compare(values: dict[int, float], base: dict[int, float]) -> Optional[Paired]:
    seeds = sorted(set(values) & set(base))
    if len(seeds) < 2:
        return None
    return paired([values[s] for s in seeds], [base[s] for s in seeds])


def _ms(xs: list[float], digits: int) -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.fmean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def versus(values: dict[int, float], base: Optional[dict[int, float]], higher_is_better: bool, digits: int = 4,
           ) -> tuple[Optional[Paired], str, str]:
    """(paired comparison, "Δ [CI]" text, verdict) of ``values`` against ``base``; ``base`` None: this row is the
    reference itself."""
    if base is None:
        return None, "—", "—"
    p = compare(values, base)
    if p is None:
        return None, "—", "pending"
    # A difference below the table's resolution still gets a verdict: show its size instead of +0.0000.
    spec = f"+.{digits}f" if max(abs(p.mean), abs(p.low), abs(p.high)) >= 10 ** -digits else "+.1e"
    return p, f"{p.mean:{spec}} [{p.low:{spec}}, {p.high:{spec}}]", p.verdict(higher_is_better)


# ---- the sections -----------------------------------------------------------------------------------------------

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
              f"- Seeds: {', '.join(map(str, R.SEEDS))} (initialization and batch order). Norms: "
              f"{', '.join(R.MAIN_NORMS)}; IBNorm ops at their default strength 0.5.",
              "- Verdict rule: the paired difference to the base norm (same seed) with a 95% Student-t interval; "
              "\"better\" or \"worse\" only when the interval excludes 0, otherwise \"no detectable difference\".",
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


def tuning_section(runs: list[dict], results_root: Optional[Path] = None) -> list[str]:
    tune = [r for r in runs if r.get("stage") == "tune"]
    lines = ["## Learning-rate grids (tuning budget, validation split carved from the training data)", "",
             "Each cell: the validation score (vision: held-out accuracy; LMs: nats/byte), then the largest loss "
             "rise (spikes; see the rule above). **Bold**: the chosen rate.", ""]
    if not tune:
        return lines + ["No tuning run has finished yet.", ""]
    cells: dict[tuple, dict[float, dict]] = defaultdict(dict)
    for r in tune:
        cells[(r["config"]["model"], r["config"]["norm"])][r["config"]["lr"]] = r
    lines += ["| family | norm | low rate | middle | high |", "|---|---|---|---|---|"]
    edges = []
    for (model, norm), per_lr in sorted(cells.items(), key=lambda kv: (list(R.FAMILIES).index(kv[0][0]), kv[0][1])):
        grid = R.FAMILIES[model].lr_grid
        chosen = R.chosen_lr_from({lr: per_lr.get(lr) for lr in grid})
        row = []
        for lr in grid:
            r = per_lr.get(lr)
            if r is None:
                row.append(f"{lr:g}: pending")
                continue
            text = f"{lr:g}: " + (f"diverged at step {r['diverged_at']}" if "final" not in r else
                                  f"{metric(r):.4f}, rise {max_loss_rise(r['curve']):.3f}")
            row.append(f"**{text}**" if lr == chosen else text)
        lines.append(f"| {model} | {norm} | " + " | ".join(row) + " |")
        if chosen is not None and not math.isnan(chosen) and chosen in (min(grid), max(grid)):
            edges.append(f"{model} {norm} ({chosen:g})")
    if edges:
        lines += ["", f"Chosen at an edge of the grid, so the best rate may lie beyond it: {', '.join(edges)}. "
                  "Every norm had the same grid, so the comparison stays fair, but these norms may be undertuned alike."]
    flat = flat_rows(cells)
    if flat:
        lines += ["", f"The same score at every rate of the grid (within {FLAT_SPREAD}): {', '.join(flat)}. A score "
                  "that does not move with the rate is what a model reaches when it has learned only what does not "
                  "depend on its input (for an LM, the bytes' frequencies)."]
        if any(text.split()[1] == "dyt" for text in flat):
            lines += ["DyT runs at its default α₀ = 0.5 with the same rate grid as every norm; its authors tune α₀ per "
                      "layer type for LLMs, which this protocol does not, so its rows above show DyT at its default, "
                      "not DyT tuned."]
            lines += dyt_diagnosis_lines(results_root)
    return lines + [""]


DYT_DIAGNOSIS = Path("reproduction") / "dyt_lm_diagnosis.json"  # written by scripts/diagnose_dyt_lm.py


def dyt_diagnosis_lines(results_root: Optional[Path]) -> list[str]:
    """Why DyT's LMs stall, in numbers from the committed diagnosis (nothing when it is absent)."""
    path = None if results_root is None else Path(results_root) / DYT_DIAGNOSIS
    if path is None or not path.exists():
        return []
    diagnosis = json.loads(path.read_text())
    runs, parts, first_saturated = diagnosis["runs"], [], []
    for model in sorted({key.split(" / ")[0] for key in runs}):
        dyt, kept, base = (runs.get(f"{model} / {v}") for v in ("dyt", "dyt, final norm kept", "base"))
        if not (dyt and kept and base):
            continue
        first_saturated += [next((r["step"] for r in dyt if (r["saturated"] or 0) > 0.99), None)]
        end = dyt[-1]
        parts.append(f"{model}: shared {end['shared_rms']:.3g} against varying {end['varying_rms']:.2g}, "
                     f"{end['saturated']:.0%} saturated, training loss {end['train_loss']:.3f}; with the final norm "
                     f"kept {kept[-1]['train_loss']:.3f}; base norm {base[-1]['train_loss']:.3f}")
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
            "as the final norm trains. Input of the final norm at the last step, as root-mean-squares: "
            + "; ".join(parts) + "."]


FLAT_SPREAD = 0.005  # largest minus smallest score over the grid, below which a norm did not respond to the rate


def flat_rows(cells: dict[tuple, dict[float, dict]]) -> list[str]:
    """``model norm (low-high)`` for each (model, norm) whose runs finished at every rate with scores within
    FLAT_SPREAD of each other."""
    out = []
    for (model, norm), per_lr in sorted(cells.items()):
        scores = [metric(per_lr[lr]) for lr in R.FAMILIES[model].lr_grid if lr in per_lr]
        if len(scores) == len(R.FAMILIES[model].lr_grid) and None not in scores and \
                max(scores) - min(scores) < FLAT_SPREAD:
            out.append(f"{model} {norm} ({min(scores):.4f}-{max(scores):.4f})")
    return out


def main_section(runs: list[dict], stage: str = "main", title: str = "Main table (claim 1)") -> tuple[list[str], dict]:
    """The table of one stage's runs against the main table's base norm; returns its lines and the comparisons."""
    main = [r for r in runs if r.get("stage") == stage]
    values = by_seed(main)
    main_values = by_seed([r for r in runs if r.get("stage") == "main"])
    base_values = {k: v for k, v in main_values.items() if k[1] == "base"}
    lrs = {(r["config"]["model"], r["config"]["norm"]): r["config"]["lr"] for r in main}
    diverged = defaultdict(list)
    for r in main:
        if "final" not in r:
            diverged[(r["config"]["model"], r["config"]["norm"])].append(r["config"]["seed"])
    lines = [f"## {title}", ""]
    comparisons = {}
    if not main:
        return lines + ["No run of this stage has finished yet.", ""], comparisons
    for model in R.FAMILIES:
        norms = [n for (m, n) in values if m == model] + [n for (m, n) in diverged if m == model and (m, n) not in values]
        if not norms:
            continue
        kind = task_kind(model)
        digits = 4
        name = "test accuracy" if kind.name == "vision" else "validation nats/byte"
        learnable = stage == "learnable"  # also against the op at its fixed default strength, and its rank
        lines += [f"### {model} ({name}, {'higher' if kind.higher_is_better else 'lower'} is better)", "",
                  f"| norm | lr | seeds | {name} | Δ vs base [95% CI] | verdict |"
                  + (" Δ vs fixed strength [95% CI] | verdict | rank among the main table's norms |" if learnable else ""),
                  "|---|---|---|---|---|---|" + ("---|---|---|" if learnable else "")]
        base = base_values.get((model, "base"), {})
        main_means = {n: statistics.fmean(v.values()) for (m, n), v in main_values.items() if m == model}
        for norm in sorted(set(norms), key=lambda n: (n != "base", n)):
            v = values.get((model, norm), {})
            p, delta, verdict = versus(v, None if norm == "base" else base, kind.higher_is_better, digits)
            if p is not None:
                comparisons[(model, norm)] = (p, verdict)
            seeds = f"{len(v)}" + (f" (+{len(diverged[(model, norm)])} diverged)" if diverged.get((model, norm)) else "")
            row = f"| {norm} | {lrs[(model, norm)]:g} | {seeds} | {_ms(list(v.values()), digits)} | {delta} | {verdict} |"
            if learnable:
                fixed = norm.split(":")[0]
                _, f_delta, f_verdict = versus(v, main_values.get((model, fixed), {}), kind.higher_is_better, digits)
                rank = "—"
                if v and main_means:
                    mine = statistics.fmean(v.values())
                    ahead = sum(1 for x in main_means.values() if (x > mine if kind.higher_is_better else x < mine))
                    rank = f"{ahead + 1} of {len(main_means) + 1}"
                row += f" {f_delta} | {f_verdict} | {rank} |"
            lines.append(row)
        lines.append("")
    return lines, comparisons


def generalization_section(runs: list[dict], ixt: dict) -> tuple[list[str], dict]:
    gen = [r for r in runs if r.get("stage") == "generalization"]
    lines = ["## Generalization (claim 3)", "",
             f"Fixed subset of {R.GENERALIZATION_SUBSET:,} training images; gap = train accuracy − test accuracy "
             "(smaller is better). Δ gap is paired by seed against the base norm. I(X;T): the same norm's mean over "
             "layers in the information table (main-table models), since the claimed bound tightens with it.", ""]
    comparisons = {}
    if not gen:
        return lines + ["No run of this stage has finished yet.", ""], comparisons
    tr = by_seed(gen, lambda r: r["final"].get("train_acc") if "final" in r else None)
    te = by_seed(gen)
    gap = {k: {s: tr[k][s] - te[k][s] for s in tr[k] if s in te.get(k, {})} for k in tr}
    lines += ["| family | norm | train acc | test acc | gap | Δ gap vs base [95% CI] | verdict | I(X;T) |",
              "|---|---|---|---|---|---|---|---|"]
    for (model, norm) in sorted(gap, key=lambda k: (list(R.FAMILIES).index(k[0]), k[1] != "base", k[1])):
        p, delta, verdict = versus(gap[(model, norm)], None if norm == "base" else gap.get((model, "base"), {}), False)
        if p is not None:
            comparisons[(model, norm)] = (p, verdict)
        lines.append(f"| {model} | {norm} | {_ms(list(tr[(model, norm)].values()), 4)} | "
                     f"{_ms(list(te[(model, norm)].values()), 4)} | {_ms(list(gap[(model, norm)].values()), 4)} | {delta} | {verdict} | "
                     f"{f'{ixt[(model, norm)]:.3f}' if (model, norm) in ixt else '—'} |")
    return lines + [""], comparisons


def ablation_section(runs: list[dict]) -> tuple[list[str], dict]:
    abl = [r for r in runs if r.get("stage") == "ablation"]
    lines = ["## Ablations (claim 5)", "",
             "Tuning budget, seeds 0-2. Each variant is paired by seed against the same op at its defaults "
             "(strength 0.5, compress-then-standardize, affine); `base:affine=0` against the base norm.", ""]
    comparisons = {}
    if not abl:
        return lines + ["No run of this stage has finished yet.", ""], comparisons
    values = by_seed(abl)
    for model in R.ABLATION_MODELS:
        kind = task_kind(model)
        rows = [k for k in values if k[0] == model]
        if not rows:
            continue
        lines += [f"### {model}", "", "| variant | seeds | score | Δ vs its reference [95% CI] | verdict |", "|---|---|---|---|---|"]
        for r_kind, norms in R.ABLATION_NORMS.items():
            for norm in norms:
                v = values.get((model, norm))
                if v is None:
                    continue
                ref = norm.split(":")[0] if r_kind != "reference" else "base"
                p, delta, verdict = versus(v, None if norm == "base" else values.get((model, ref), {}),
                                           kind.higher_is_better)
                if p is not None:
                    comparisons[(model, norm)] = (p, verdict)
                lines.append(f"| {norm} | {len(v)} | {_ms(list(v.values()), 4)} | {delta} | {verdict} |")
        lines.append("")
    return lines + default_strength_lines(comparisons), comparisons


def evidenced_default(op: str, comparisons: dict) -> Optional[float]:
    """The default strength the strength ablation supports for ``op``: a strength replaces the default only when it
    beats it beyond its interval in every ablation model (the largest mean gain among those that do); None while a
    comparison is missing."""
    default = R.REFERENCE_STRENGTH  # what the ablation's reference runs used, whatever the library's default is now
    gains = {}
    for v in R.STRENGTHS[op]:
        if v == default:
            continue
        found = [comparisons.get((m, f"{op}:strength={v}")) for m in R.ABLATION_MODELS]
        if None in found:
            return None
        if all(verdict == "better" for _, verdict in found):
            gains[v] = statistics.fmean(abs(p.mean) for p, _ in found)  # "better" already holds the direction
    return max(gains, key=gains.get) if gains else default


def default_strength_lines(comparisons: dict) -> list[str]:
    parts = []
    for op in R.IB_OPS:
        now, supported = COMPRESSIONS[op.removeprefix("ib_")].default, evidenced_default(op, comparisons)
        parts.append(f"{op}: " + ("pending" if supported is None else f"{supported:g}")
                     + f" (library default {now:g})")
    return [f"Default strengths the evidence supports (a strength replaces the ablations' reference "
            f"{R.REFERENCE_STRENGTH:g} only when it beats it beyond its interval in every ablation model; "
            f"`tests/test_reproduce.py` checks the library's defaults against this): {'; '.join(parts)}.", ""]


def _info_summary(r: dict) -> dict:
    """A run's information rows reduced to the quantities the tables show."""
    rows = r["rows"]
    norm_rows = [x for x in rows if x["layer"] != "penultimate"]
    pen = rows[-1]
    contraction = [x["contraction"] for x in norm_rows if x["contraction"] is not None]
    return {"I_XT": statistics.fmean(x["I_XT"] for x in norm_rows), "I_TY": pen["I_TY_probe"], "IB": pen["IB"],
            "contraction": statistics.fmean(contraction) if contraction else None}


def info_section(runs: list[dict]) -> tuple[list[str], dict, dict]:
    """Claim 2's table; returns its lines, the paired comparisons of the penultimate IB value, and each
    (model, norm)'s mean I(X;T) (for the generalization table)."""
    lines = ["## Information (claim 2)", "",
             "Trained main-table models, seeds 0-2. I(X;T): KSG with the Gaussian-copula correction between the top 4 "
             "principal components of the image and of each norm layer's output (2,000 test images; the estimator and "
             "dimension validated on known answers: bias about 0.01 nats up to 3.3 nats in "
             "`results/info/estimator_validation.md`, at most 0.07 nats up to 7.8 nats in "
             "`results/info/estimator_validation_high_mi.md`), averaged over the norm layers. I(T;Y): the linear-probe lower bound "
             "H(Y) − held-out cross-entropy at the penultimate features. IB = I(T;Y) − 0.1·I(X;T), where I(X;T) is "
             "the penultimate layer's. Contraction: var(s(u))/var(u), mean over IBNorm layers.", ""]
    comparisons, ixt = {}, {}
    if not runs:
        return lines + ["No run of this stage has finished yet.", ""], comparisons, ixt
    summary = {(r["config"]["model"], r["config"]["norm"], r["config"]["seed"]): _info_summary(r) for r in runs}
    lines += ["| family | norm | seeds | I(X;T), norm layers | I(T;Y) probe | IB value | Δ IB vs base [95% CI] | verdict | contraction |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model in R.VISION_FAMILIES:
        for norm in R.INFO_NORMS:
            seeds = {s: v for (m, n, s), v in summary.items() if (m, n) == (model, norm)}
            if not seeds:
                continue
            base = {s: v["IB"] for (m, n, s), v in summary.items() if (m, n) == (model, "base")}
            p, delta, verdict = versus({s: v["IB"] for s, v in seeds.items()}, None if norm == "base" else base, True, 3)
            if p is not None:
                comparisons[(model, norm)] = (p, verdict)
            ixt[(model, norm)] = statistics.fmean(v["I_XT"] for v in seeds.values())
            contraction = [v["contraction"] for v in seeds.values() if v["contraction"] is not None]
            lines.append(f"| {model} | {norm} | {len(seeds)} | {_ms([v['I_XT'] for v in seeds.values()], 3)} | "
                         f"{_ms([v['I_TY'] for v in seeds.values()], 3)} | {_ms([v['IB'] for v in seeds.values()], 3)} | "
                         f"{delta} | {verdict} | {_ms(contraction, 3) if contraction else '—'} |")
    return lines + ["", "![information planes](results/info/info_planes.png)", ""], comparisons, ixt


def _panels(models: list[str], width: float, height: float):
    """A figure with one panel per family, side by side: (figure, [(axis, model), ...])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(width * max(1, len(models)), height), squeeze=False)
    return fig, list(zip(axes[0], models))


def _per_norm(runs: list[dict], model: str, value) -> list[tuple[str, list]]:
    """``value(run)`` of one family's runs, grouped by norm (sorted)."""
    out = defaultdict(list)
    for r in runs:
        if r["config"]["model"] == model:
            out[r["config"]["norm"]].append(value(r))
    return sorted(out.items())


def _models(families: Iterable[str], runs: list[dict]) -> list[str]:
    return [m for m in families if any(r["config"]["model"] == m for r in runs)]


def info_plot(runs: list[dict], path: Path) -> None:
    fig, panels = _panels(_models(R.VISION_FAMILIES, runs), 4.4, 3.8)
    for ax, model in panels:
        for norm, seeds in _per_norm(runs, model, lambda r: r["rows"]):
            n = min(len(rows) for rows in seeds)
            xs = [statistics.fmean(rows[i]["I_XT"] for rows in seeds) for i in range(n)]
            ys = [statistics.fmean(rows[i]["I_TY_probe"] for rows in seeds) for i in range(n)]
            ax.plot(xs, ys, "o-", ms=3, lw=0.8, label=norm)
        ax.set_xlabel("I(X;T), KSG on 4+4 principal components (nats)", fontsize=8)
        ax.set_ylabel("I(T;Y), linear-probe bound (nats)", fontsize=8)
        ax.set_title(f"{model}: information plane, layers in order", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


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


def status_lines(todo: list, waiting: int) -> list[str]:
    """Where the sweep stands, first thing on the page: how many of the planned runs are in, and which stages wait."""
    if not todo and not waiting:
        return ["**Status: complete.** Every planned run is in.", ""]
    left = defaultdict(int)
    for job in todo:
        left[job.stage] += 1
    parts = [f"{stage} {n}" for stage, n in sorted(left.items(), key=lambda kv: R.STAGES.index(kv[0]))]
    parts += [f"{waiting} that wait on a tuning result"] if waiting else []
    return [f"**Status: in progress.** Still to run: {', '.join(parts)}. A verdict marked pending waits on them; "
            "the others no longer change.", ""]


def claims_section(main: dict, info: dict, gen: dict, abl: dict, runs: list[dict]) -> list[str]:
    """The paper's claims with the verdict the fixed rules give and the numbers behind it."""
    ib = [(k, v) for k, v in main.items() if k[1] in R.IB_OPS]
    expected = len(R.FAMILIES) * len(R.IB_OPS)
    counts = {w: sum(1 for _, (_, v) in ib if v == w) for w in ("better", "worse", "no detectable difference")}
    if counts["worse"]:
        c1 = "not supported"
    elif counts["better"] == expected:
        c1 = "supported"
    else:
        c1 = "inconclusive at this scale" if len(ib) == expected else "pending"
    n1 = (f"{counts['better']} better, {counts['no detectable difference']} no detectable difference, {counts['worse']} worse "
          f"of {len(ib)}/{expected} op × family comparisons")
    # The direction of each mean difference, significant or not: where IBNorm trails, named.
    behind = [f"{m} {n}" for (m, n), (p, _) in ib if p.mean != 0 and (p.mean > 0) != task_kind(m).higher_is_better]
    if ib:
        n1 += (f"; mean difference in IBNorm's favour in {sum(1 for _, (p, _) in ib if p.mean != 0) - len(behind)}, "
               f"against it in {len(behind)}" + (f" ({', '.join(behind)})" if behind else ""))

    g = [(k, v) for k, v in gen.items() if k[1] in R.IB_OPS]
    g_expected = len(R.VISION_FAMILIES) * len(R.IB_OPS)
    smaller = sum(1 for _, (_, v) in g if v == "better")
    larger = sum(1 for _, (_, v) in g if v == "worse")
    c3 = ("not supported" if larger else "supported" if smaller == g_expected else
          "inconclusive at this scale" if len(g) == g_expected else "pending")
    n3 = f"gap smaller in {smaller}, larger in {larger}, no detectable difference in {len(g) - smaller - larger} of {len(g)}/{g_expected}"

    i_expected = len(R.VISION_FAMILIES) * len(R.IB_OPS)
    higher = sum(1 for (_, v) in info.values() if v == "better")
    lower = sum(1 for (_, v) in info.values() if v == "worse")
    c2 = ("not supported" if lower else "supported" if higher == i_expected else
          "inconclusive at this scale" if len(info) == i_expected else "pending")
    n2 = (f"penultimate IB value higher in {higher}, lower in {lower}, no detectable difference in "
          f"{len(info) - higher - lower} of {len(info)}/{i_expected} op × vision-family comparisons")

    tune = [r for r in runs if r.get("stage") == "tune"]
    trained = {(r["config"]["model"], r["config"]["norm"], r["config"]["lr"]): "final" in r for r in tune}
    breaks = [(m, n, lr) for (m, n, lr), ok in trained.items()
              if n in R.IB_OPS and not ok and trained.get((m, "base", lr))]
    base_breaks = [(m, n, lr) for (m, n, lr), ok in trained.items() if n == "base" and not ok]
    t_expected = sum(len(f.lr_grid) for f in R.FAMILIES.values()) * len(R.MAIN_NORMS)
    c4 = "not supported" if breaks else "supported" if len(tune) >= t_expected else "pending"
    n4 = (f"IBNorm diverged at {len(breaks)} (family, rate) where the base norm trained; the base norm diverged at "
          f"{len(base_breaks)}; {len(tune)}/{t_expected} tuning runs; spikes: the largest loss rise in the grid below")

    order = [(k, v) for k, v in abl.items() if "order=" in k[1]]
    stc_worse = sum(1 for _, (_, v) in order if v == "worse")
    stc_better = sum(1 for _, (_, v) in order if v == "better")
    order_expected = len(R.ABLATION_MODELS) * len(R.IB_OPS)
    # "not supported" cannot be undone by runs still to come; "supported" and "inconclusive" wait for all of them.
    c5 = ("not supported" if stc_better else "pending" if len(order) < order_expected else
          "supported" if stc_worse else "inconclusive at this scale")
    n5 = (f"standardize-then-compress worse than compress-then-standardize in {stc_worse}, better in {stc_better}, "
          f"no detectable difference in {len(order) - stc_worse - stc_better} of {len(order)}/{order_expected} "
          "op × model comparisons")
    # A moderate strength: no extreme of an op's strength grid beats that op's default (0.5) beyond its interval.
    extremes = [(k, v) for k, v in abl.items() if "strength=" in k[1] and
                float(k[1].split("strength=")[1]) in (min(R.STRENGTHS[k[1].split(":")[0]]), max(R.STRENGTHS[k[1].split(":")[0]]))]
    extreme_better = sum(1 for _, (_, v) in extremes if v == "better")
    extreme_worse = sum(1 for _, (_, v) in extremes if v == "worse")
    expected_extremes = len(R.ABLATION_MODELS) * len(R.IB_OPS) * 2
    c5b = ("not supported" if extreme_better else "supported" if extreme_worse == expected_extremes else
           "inconclusive at this scale" if len(extremes) == expected_extremes else "pending")
    n5b = (f"an extreme strength beats the default 0.5 in {extreme_better}, loses in {extreme_worse}, no detectable "
           f"difference in {len(extremes) - extreme_better - extreme_worse} of {len(extremes)}/{expected_extremes}")
    return ["## The paper's claims and the verdicts", "",
            "| claim | verdict | evidence |", "|---|---|---|",
            f"| 1. IBNorm outperforms BatchNorm, LayerNorm and RMSNorm on LLaMA, GPT-2, ResNet and ViT | **{c1}** | {n1} |",
            f"| 2. Higher IB value (mutual-information analysis) | **{c2}** | {n2} |",
            f"| 3. Tighter generalization than variance-centric norms | **{c3}** | {n3} |",
            f"| 4. Keeps the stability of standard normalization | **{c4}** | {n4} |",
            f"| 5a. Ablations favour compress-then-standardize | **{c5}** | {n5} |",
            f"| 5b. Ablations favour a moderate strength | **{c5b}** | {n5b} |", "",
            "The rules, fixed before the runs: claims 1, 2, 3 and 5b are supported only when every comparison favours "
            "the claim beyond its interval, and not supported when any goes against it; claim 4 is supported when no "
            "IBNorm op diverged at a (family, rate) where the base norm trained; claim 5a is supported when at least one "
            "comparison favours compress-then-standardize and none goes against it. That last rule is the most lenient "
            "of them: weigh its verdict by the count of comparisons that show no detectable difference.", ""]


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


# ---- figures ----------------------------------------------------------------------------------------------------

def forest_range(every: list, ib: list) -> tuple[float, float]:
    """The x-range of one forest panel: every interval when they share a scale; otherwise the IBNorm ops' intervals
    and 0, widened threefold, so that a far-off peer (DyT's stalled LMs) does not squash them into a dot."""
    def span(ps):
        return min([0.0] + [p.low for p in ps]), max([0.0] + [p.high for p in ps])
    (a_lo, a_hi), (i_lo, i_hi) = span(every), span(ib or every)
    width = max(i_hi - i_lo, 1e-9)
    if a_hi - a_lo <= 4 * width:
        lo, hi = a_lo, a_hi
    else:
        lo, hi = i_lo - width, i_hi + width
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def forest_plot(comparisons: dict, path: Path) -> None:
    fig, panels = _panels([m for m in R.FAMILIES if any(k[0] == m for k in comparisons)], 3.6, 3.4)
    for ax, model in panels:
        items = sorted((n, p) for (m, n), (p, _) in comparisons.items() if m == model)
        lo, hi = forest_range([p for _, p in items], [p for n, p in items if n in R.IB_OPS])
        for i, (norm, p) in enumerate(items):
            color = "tab:green" if p.verdict(task_kind(model).higher_is_better) == "better" else (
                "tab:red" if p.verdict(task_kind(model).higher_is_better) == "worse" else "tab:gray")
            if lo <= p.mean <= hi:  # an interval running past the edge is clipped there
                ax.errorbar(p.mean, i, xerr=[[p.mean - p.low], [p.high - p.mean]], fmt="o", color=color, capsize=3)
            else:  # off the scale the IBNorm ops need: an arrow at the edge with the value
                edge, side = (hi, "right") if p.mean > hi else (lo, "left")
                ax.annotate(f"{p.mean:+.3g} [{p.low:+.3g}, {p.high:+.3g}]", (edge, i), xytext=(-4 if side == "right" else 4, 0),
                            textcoords="offset points", ha="right" if side == "right" else "left", va="center",
                            fontsize=7, color=color, arrowprops=None)
                ax.plot(edge, i, marker=">" if side == "right" else "<", color=color)
        ax.set_xlim(lo, hi)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=8)
        kind = task_kind(model)
        ax.set_xlabel("Δ test accuracy" if kind.name == "vision" else "Δ val nats/byte (lower better)", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Paired Δ vs the base norm, 95% t-interval (green better, red worse; an arrow: off the scale, "
                 "its value written)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def curves_plot(runs: list[dict], path: Path) -> None:
    main = [r for r in runs if r.get("stage") == "main" and "final" in r]
    fig, panels = _panels(_models(R.FAMILIES, main), 4.0, 3.4)
    for ax, model in panels:
        for norm, curves in _per_norm(main, model, lambda r: r["curve"]):
            n = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(n)]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            ax.plot(steps, mean, lw=0.8, label=norm)
        ax.set_title(f"{model}: training loss (mean over seeds)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def normal_contraction(op: str, strength: float, points: int = 4001) -> float:
    """var(s(u)) / var(u) over standard-normal quantiles (the base norm's output): how much ``op`` at ``strength``
    compresses, on one scale for every op (1: not at all). Strengths of different ops are not comparable; this is."""
    import torch
    u = torch.special.ndtri((torch.arange(points, dtype=torch.float64) + 0.5) / points)
    return (COMPRESSIONS[op].s(u, strength).var() / u.var()).item()


def _op(norm: str) -> str:
    return norm.split(":")[0].removeprefix("ib_")


def learned_layers(runs: list[dict]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(model, norm) -> (strength, contraction) per norm layer in model order, each the mean over seeds."""
    learned = [r for r in runs if r.get("stage") == "learnable" and r.get("learned_strength")]
    out = {}
    for model in _models(R.FAMILIES, learned):
        for norm, seeds in _per_norm(learned, model, lambda r: list(r["learned_strength"].values())):
            strength = [statistics.fmean(v) for v in zip(*seeds)]
            contraction = [statistics.fmean(normal_contraction(_op(norm), x) for x in v) for v in zip(*seeds)]
            out[(model, norm)] = strength, contraction
    return out


NO_COMPRESSION = 0.99  # a layer whose learned contraction is at least this has switched compression off


def learned_compression_lines(runs: list[dict]) -> list[str]:
    """Per family and op: the compression each layer learned, on the contraction scale every op shares."""
    layers = learned_layers(runs)
    if not layers:
        return []
    ref = {op: normal_contraction(_op(op), R.REFERENCE_STRENGTH) for op in R.IB_OPS}
    lines = ["What each layer learned, as the variance contraction var(s(u))/var(u) of a standard-normal u at its "
             "learned strength (1: no compression; at the default strength "
             + ", ".join(f"{op} {c:.2f}" for op, c in ref.items())
             + "). Layers in model order, each the mean over seeds.", "",
             "| family | norm | layers | contraction per layer | compression off (≥ "
             f"{NO_COMPRESSION:g}) | stronger than the default |", "|---|---|---|---|---|---|"]
    for (model, norm), (_, contraction) in layers.items():
        off = sum(c >= NO_COMPRESSION for c in contraction)
        stronger = sum(c < ref[norm.split(":")[0]] for c in contraction)
        lines.append(f"| {model} | {norm} | {len(contraction)} | {' '.join(f'{c:.2f}' for c in contraction)} | "
                     f"{off} of {len(contraction)} | {stronger} of {len(contraction)} |")
    return lines + [""]


def strength_plot(runs: list[dict], path: Path) -> bool:
    """The strength each layer learned (top) and the contraction it gives (bottom), per family and op, mean over
    seeds; False when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = learned_layers(runs)
    models = list(dict.fromkeys(model for model, _ in layers))
    if not models:
        return False
    fig, axes = plt.subplots(2, len(models), figsize=(4.0 * len(models), 6.4), squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        for (m, norm), (strength, contraction) in layers.items():
            if m == model:
                line, = top.plot(range(len(strength)), strength, "o-", ms=3, label=norm.split(":")[0])
                bottom.plot(range(len(contraction)), contraction, "o-", ms=3, color=line.get_color())
                bottom.axhline(normal_contraction(_op(norm), R.REFERENCE_STRENGTH), color=line.get_color(),
                               lw=0.6, ls=":")
        top.axhline(R.REFERENCE_STRENGTH, color="k", lw=0.6, ls="--")
        top.set_title(f"{model}: learned strength per layer", fontsize=9)
        top.set_ylabel("strength (power: 1 is no compression;\nlog, tanh: 0 is none)", fontsize=7)
        bottom.axhline(1.0, color="k", lw=0.6, ls="--")
        bottom.set_title(f"{model}: compression it gives (dotted: at {R.REFERENCE_STRENGTH:g})", fontsize=9)
        bottom.set_ylabel("var(s(u))/var(u), u ~ N(0,1)", fontsize=7)
        bottom.set_xlabel("norm layer (model order)", fontsize=8)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def ablation_strength_plot(runs: list[dict], path: Path) -> bool:
    """Each op's ablation score against its strength (mean and sd over seeds; the default 0.5 is the op's reference
    run), with the base norm as a line; False when there is nothing to plot."""
    abl = [r for r in runs if r.get("stage") == "ablation" and metric(r) is not None]
    if not any("strength=" in r["config"]["norm"] for r in abl):
        return False
    fig, panels = _panels(_models(R.ABLATION_MODELS, abl), 4.2, 3.4)
    for ax, model in panels:
        scores = dict(_per_norm(abl, model, metric))
        for op in R.IB_OPS:
            points = [(v, scores.get(op if v == R.REFERENCE_STRENGTH else f"{op}:strength={v}")) for v in R.STRENGTHS[op]]
            points = [(v, ys) for v, ys in points if ys]
            if points:
                ax.errorbar([v for v, _ in points], [statistics.fmean(ys) for _, ys in points],
                            yerr=[statistics.stdev(ys) if len(ys) > 1 else 0.0 for _, ys in points],
                            fmt="o-", ms=3, capsize=2, label=op)
        if scores.get("base"):
            ax.axhline(statistics.fmean(scores["base"]), color="k", lw=0.8, ls="--", label="base norm")
        kind = task_kind(model)
        ax.set_xscale("log")
        ax.minorticks_off()  # log-scale minor labels would overprint the strengths
        ax.set_xticks([0.1, 0.25, 0.5, 1.0, 2.0], ["0.1", "0.25", "0.5", "1", "2"])
        ax.set_title(f"{model}: strength ablation (tuning budget)", fontsize=9)
        ax.set_xlabel("strength", fontsize=8)
        ax.set_ylabel(f"{'test accuracy' if kind.name == 'vision' else 'validation nats/byte'} "
                      f"({'higher' if kind.higher_is_better else 'lower'} is better)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


# ---- the page ---------------------------------------------------------------------------------------------------

def build_report(results_root: str | Path = "results", page: str | Path = "RESULTS.md", figures: bool = True) -> str:
    """Write every area's runs.csv, the figures and ``page``; return the page."""
    root = Path(results_root)
    runs = load_runs(root)
    for area, area_runs in runs.items():
        if area == "info" and area_runs:  # one row per layer
            write_csv(root / area / "runs.csv", [dict(row, **{k: r["config"][k] for k in ("model", "norm", "seed")})
                                                  for r in area_runs for row in r["rows"]], INFO_COLUMNS)
        elif area_runs:
            write_csv(root / area / "runs.csv", [csv_row(r) for r in area_runs], CSV_COLUMNS)
    repro = runs["reproduction"]
    everything = [r for area_runs in runs.values() for r in area_runs]
    main_lines, main_cmp = main_section(repro)
    info_lines, info_cmp, ixt = info_section(runs["info"])
    gen_lines, gen_cmp = generalization_section(runs["generalization"], ixt)
    abl_lines, abl_cmp = ablation_section(runs["ablations"])
    learn_lines, _ = main_section(repro, "learnable", "Learnable strength (the fixed-strength op's chosen rate; Δ vs the main table's base norm)")
    todo, waiting = R.pending(root)
    fig_dir = root / "reproduction"
    lines = ["# Does IBNorm hold up? An independent reproduction at small scale", "",
             f"Generated by `{COMMAND}` from the run files in `results/*/runs/`; `ibnorm reproduce` trains what is "
             "missing. Do not edit by hand.", ""]
    lines += status_lines(todo, waiting)
    lines += claims_section(main_cmp, info_cmp, gen_cmp, abl_cmp, repro)
    lines += main_lines
    if figures and main_cmp:
        forest_plot(main_cmp, fig_dir / "forest.png")
        curves_plot(repro, fig_dir / "curves.png")
        lines += ["![forest plot](results/reproduction/forest.png)", "", "![training curves](results/reproduction/curves.png)", ""]
    lines += tuning_section(repro, root)
    lines += info_lines + gen_lines + abl_lines
    if figures and ablation_strength_plot(runs["ablations"], root / "ablations" / "strength.png"):
        lines += ["![strength ablation](results/ablations/strength.png)", ""]
    lines += learn_lines
    if figures and runs["info"]:
        info_plot(runs["info"], root / "info" / "info_planes.png")
    lines += learned_compression_lines(repro)
    if figures and strength_plot(repro, fig_dir / "learned_strength.png"):
        lines += ["![learned strength](results/reproduction/learned_strength.png)", ""]
    retrained = [json.loads(f.read_text()) for f in sorted((root / "reproduction" / "weights").glob("*.json"))]
    lines += posthoc_section(repro, retrained)
    lines += protocol_section()
    lines += quality_section(runs)
    lines += compute_section(everything, len(todo), waiting)
    lines += ["## What this scale cannot show", "",
              "- Models of 0.08-0.8M parameters trained for minutes on one CPU thread: effects that appear only "
              "with width, depth or long training are out of reach, and so is the paper's scale.",
              "- Three seeds give wide intervals: \"no detectable difference\" means the effect, if any, is smaller "
              "than the interval shown, not that there is none.",
              "- One dataset per task (Fashion-MNIST, Jane Austen's novels, bytes); no ImageNet, no web text.", ""]
    text = "\n".join(lines)
    atomic_write_text(page, text)
    return text
