"""Reading the committed run files, and the statistics and figure helpers every section shares."""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from .. import reproduce as R
from ..stats import Paired, paired
from ..tasks import task_kind
from ..train import TrainConfig

AREAS = ("reproduction", "generalization", "ablations", "info", "confirmatory", "scale")


CSV_COLUMNS = ["stage", "tag", "model", "norm", "seed", "lr", "steps", "eval_set", "val_loss", "val_bpb", "test_acc",
               "test_loss", "holdout_acc", "holdout_loss", "train_acc", "diverged_at", "max_loss_rise", "wall_time_s"]


INFO_COLUMNS = ["model", "norm", "seed", "index", "layer", "type", "dim", "I_XT", "I_TY_probe", "probe_ce", "IB", "beta",
                "contraction"]


CURVE_EVERY = TrainConfig.curve_every  # the protocol's runs keep the default: a curve point is this many steps
SPIKE_WINDOW = 10  # curve points behind the running minimum of the largest-rise measure


COMMAND = "ibnorm report"


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


def score_verdict(p: Optional[Paired], verdict: str, model: str) -> str:
    """A verdict cell of a comparison in the family's score: "better" or "worse" whose whole 95% interval lies inside
    the smallest effect of interest says so (a systematic difference too small to matter). Only the cell changes:
    the rules read the verdict itself."""
    from .decisive import bound_of
    if p is not None and verdict in ("better", "worse") and max(abs(p.low), abs(p.high)) < bound_of(model):
        return f"{verdict}, by less than ±{R.EQUIVALENCE_TEXT[task_kind(model).name]}"
    return verdict


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
