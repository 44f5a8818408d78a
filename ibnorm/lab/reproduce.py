"""The reproduction of the paper's claims: the protocol, in one place, and the runs it takes.

Every number in ``RESULTS.md`` comes from a run planned here. The protocol is fixed before any run:

- each family trains with the same data, model, steps, batch, optimizer and schedule for every norm
  (:data:`FAMILIES`); only the learning rate differs, chosen per norm from the same 3-value grid
  (``Family.lr_grid``) on a validation split carved out of the training data, with one seed
  (:data:`TUNE_SEED`) and a quarter of the steps;
- the main table then runs :data:`SEEDS` at each norm's chosen rate and is scored on the test set (vision: all
  10k images) or the validation text (LMs: 262,144 tokens, each scored once);
- the other stages (generalization, ablations, learnable strength, post-hoc conversion) reuse a family's
  settings and say what they change.

A run's result JSON lands in ``results/<area>/runs/<stage>__<model>__<norm>__s<seed>.json`` (committed); its
checkpoints and weights stay in ``runs/reproduction/`` (not committed). :func:`pending` lists the runs whose
result is missing and whose inputs are ready: a run needs its family's chosen rate, so the tuning runs come
first. ``ibnorm reproduce`` runs them, resumably, and ``ibnorm report`` turns the committed files into
``RESULTS.md`` (:mod:`ibnorm.lab.results`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..atomic import atomic_write_json
from .models import LAB_STRENGTH
from .records import provenance
from .sweep import IB_OPS, slug
from .tasks import task_kind
from .train import Diverged, TrainConfig

# ---- the protocol: every setting of the reproduction, fixed before the runs ------------------------------------

LR_GRID = (1e-3, 3e-3, 1e-2)  # AdamW peak rates, steps of about sqrt(10): the same three for every norm of a family
# A norm whose chosen rate sits at an edge of its grid gets the next rate of this ladder beyond that edge (the
# grid's x3 step: 1, 3, 10, 30...), until its choice is interior; a rate that diverges counts as tried. The ladder
# ends at LR_MIN and LR_MAX: a choice at one of those ends stays there, and the page says so.
LR_LADDER = tuple(m * 10.0 ** e for e in range(-6, 0) for m in (1, 3)) + (1.0,)
LR_MIN, LR_MAX = 1e-5, 1.0
SEEDS = (0, 1, 2)  # the seeds of every stage but the main table's base norm and ops (and the ones that chose)
MAIN_SEEDS = tuple(range(8))  # the main table's seeds for the base norm and the three ops
TUNE_SEED = 100  # the learning-rate choice uses one seed that no reported run uses
PEERS = ("dyt", "normalnorm", "derf")  # 3 seeds: worse than the base norm beyond doubt, or a newcomer to place
MAIN_NORMS = ("base", *IB_OPS, *PEERS)
GENERALIZATION_SUBSET = 5000  # training images of the generalization stage (a fixed selection)
POSTHOC_FRACTION = 0.25  # post-hoc conversion fine-tunes for this fraction of the main steps
POSTHOC_LR_SCALE = 0.3  # ... at this fraction of the base norm's chosen rate (a fresh warmup and cosine)


@dataclass(frozen=True)
class Family:
    """One model family's training protocol (the same for every norm)."""

    model: str
    steps: int  # main-table optimizer steps
    tune_steps: int  # the learning-rate choice's shorter budget
    settings: dict  # every other TrainConfig field that the protocol sets
    tune_settings: dict  # what the tuning runs change: evaluation on a split carved from the training data
    generalization_steps: int = 0  # vision: steps on the 5k subset (0 = no generalization stage)
    lr_grid: tuple = LR_GRID  # the rates every norm of this family is tuned over


_VISION = dict(batch_size=64, weight_decay=0.05, warmup_steps=100, eval_examples=0, dataset="fashion-mnist")
_LM = dict(batch_size=16, context=128, weight_decay=0.1, warmup_steps=100, eval_batches=128, val_windows="tiled",
           dataset="austen", tokenizer="byte")
# Tuning evaluates on 5,000 training images, or on the last 100,000 training bytes (32 x 16 x 128 of them scored).
_VISION_TUNE = dict(holdout=5000)
_LM_TUNE = dict(holdout=100_000, eval_batches=32)

FAMILIES = {
    # 3000 x 64 = 3.2 epochs of Fashion-MNIST; 6000 for the ViT, which learns more slowly (4000 steps at the old
    # default rate gave the base norm 0.846, short of the 0.85 this protocol requires).
    # The vision grids are LR_GRID moved one step up (ResNet) or down (ViT): with LR_GRID itself the first
    # tuning runs chose its top for every ResNet norm and its bottom for the ViT (see RESULTS.md, protocol).
    "resnet-mini": Family("resnet-mini", 3000, 750, dict(_VISION, eval_every=500), _VISION_TUNE, 3000,
                          (3e-3, 1e-2, 3e-2)),
    # Its generalization stage was 4000 steps first: the base norm reached train accuracy 0.981-0.993, short of the
    # 0.99 (overfitting) the protocol requires, so it became 6000 before any other norm's run (RESULTS.md, protocol).
    "vit-mini": Family("vit-mini", 6000, 1500, dict(_VISION, eval_every=1000), _VISION_TUNE, 6000,
                       (3e-4, 1e-3, 3e-3)),
    # 2000 x 16 x 128 = 4.1M training bytes, about one pass over the novels' training text.
    "gpt2-mini": Family("gpt2-mini", 2000, 500, dict(_LM, eval_every=500), _LM_TUNE),
    "llama-mini": Family("llama-mini", 2000, 500, dict(_LM, eval_every=500), _LM_TUNE),
}
VISION_FAMILIES = ("resnet-mini", "vit-mini")
LM_FAMILIES = ("gpt2-mini", "llama-mini")

GENERALIZATION_NORMS = ("base", *IB_OPS)  # claim 3 is about IBNorm against its variance-centric base

# The ablations (claim 5) on llama-mini and vit-mini, 3 seeds, with the tuning budget (a quarter of the main
# steps, the budget the rates were chosen at) and scored like the main table. Every variant of an op trains at
# that op's chosen rate; the base norm's variants at the base norm's.
ABLATION_MODELS = ("llama-mini", "vit-mini")
REFERENCE_STRENGTH = LAB_STRENGTH  # every op's strength in the main table and the ablations' reference runs
STRENGTHS = {"ib_power": (0.25, 0.5, 0.75, 1.0), "ib_log": (0.1, 0.5, 1.0, 2.0), "ib_tanh": (0.1, 0.5, 1.0, 2.0)}
# Where the best strength (mean over SEEDS) is the largest tried, the ablation adds twice that strength, until the
# best is interior or the op's range (power: 1, the identity) or STRENGTH_MAX ends it.
STRENGTH_MAX = 64.0
ABLATION_NORMS = {
    "reference": ["base", *IB_OPS],  # each op at its default: strength 0.5, compress-then-standardize, affine
    "strength": [f"{op}:strength={v}" for op in IB_OPS for v in STRENGTHS[op] if v != REFERENCE_STRENGTH],
    "order": [f"{op}:order=standardize_then_compress" for op in IB_OPS],
    "affine": ["base:affine=0"] + [f"{op}:affine=0" for op in IB_OPS],
}
# Learnable strength trains at the chosen rate of the same op with a fixed strength (no tuning of its own).
LEARNABLE_NORMS = tuple(f"{op}:learnable_strength=1" for op in IB_OPS)
# Post-hoc: power at strength 1 is the base norm itself, and learnable strength lets it move away from there. Its
# sigmoid reparameterization starts at raw = 9.2, which Adam leaves only at about lr per step, so tanh at strength
# 0.05 (s(u) within 0.1% of u for |u| < 1, 0.8% at |u| = 3), learnable through softplus, is the second way in.
POSTHOC_NORMS = ("base", "ib_power:strength=1.0,learnable_strength=1", "ib_tanh:strength=0.05,learnable_strength=1")
# ... and conversions that change the model (issue 25): tanh at 0.5 and the registered confirmatory configuration,
# each fixed and learnable. The ResNet's batch norms recompute their running statistics first, over this many
# training batches (a converted layer normalizes what its old statistics never saw).
POSTHOC_AWAY = ("ib_tanh:strength=0.5", "ib_tanh:strength=0.5,learnable_strength=1")
POSTHOC_RECALIBRATE = {"resnet-mini": 100}

# The scale ladder (claim 1 as the model grows): llama-mini and vit-mini at 2x width, then 2x width and 2x depth;
# the base norm against the registered configuration, each rate tuned per size by the same grid rule, 3 seeds.
LADDER = {"llama-mini": ((256, 4), (256, 8)), "vit-mini": ((128, 4), (128, 8))}

# Areas (results/<area>/) and the order their stages run in: what the verdicts need most comes first.
INFO_NORMS = ("base", *IB_OPS)  # claim 2: the base norm against the three ops, on the main table's vision models

# The smallest effect of interest per task, fixed before the decisive sweep's runs (issue 25): a difference inside
# +-bound is too small to matter, so a 90% interval inside it is a verdict ("equivalent", TOST at 0.05), not a
# shrug. Vision: 0.5 accuracy points, the size of the gains normalization papers headline at ImageNet scale (Derf
# over LayerNorm on ViT-B: +0.5; DyT: +0.2) and several times the base norms' seed-to-seed sd here (0.1-0.2 points).
# LMs: 0.01 nats/byte, 0.7-0.8% of the base norms' 1.2-1.4 nats/byte; near the base norm's seed sd on llama-mini
# (0.006) but under gpt2-mini's (0.023), so gpt2-mini needs many seeds to show equivalence (the page says how many).
EQUIVALENCE_BOUND = {"vision": 0.005, "lm": 0.01}
EQUIVALENCE_TEXT = {"vision": "0.5 accuracy points", "lm": "0.01 nats/byte"}
ALPHA, POWER = 0.05, 0.8  # the tests' level and the power of the minimum detectable difference

# Claim 4's stability test: the base norm and the ops go up the rate ladder, one seed and the tuning budget, beyond
# the largest rate their tuning tried, until a run diverges or LR_MAX is reached.
STABILITY_NORMS = ("base", *IB_OPS)

# The confirmatory test (results/confirmatory/PREREGISTRATION.md registers it before its first run): one IBNorm
# configuration per family, picked from the exploratory runs of SEEDS, against the base norm on seeds that chose
# nothing. The base norm's seeds 3-7 are the main table's.
CONFIRM_SEEDS = tuple(range(3, 11))
PREREGISTRATION = Path("confirmatory") / "PREREGISTRATION.md"

STAGES = ("tune", "ablation", "stability", "main", "confirmatory", "info", "generalization", "learnable", "posthoc",
          "scale_tune", "scale")
AREA = {"tune": "reproduction", "main": "reproduction", "learnable": "reproduction", "posthoc": "reproduction",
        "stability": "reproduction", "info": "info", "generalization": "generalization", "ablation": "ablations",
        "confirmatory": "confirmatory", "scale_tune": "scale", "scale": "scale"}


@dataclass(frozen=True)
class Job:
    """One training run of the reproduction."""

    stage: str
    config: TrainConfig
    tag: str = ""  # tuning: the learning rate; an ablation: its kind
    needs: Optional["Job"] = None  # a run whose trained weights this one starts from

    @property
    def name(self) -> str:
        c = self.config
        tag = f"__{self.tag}" if self.tag else ""
        return f"{self.stage}{tag}__{c.model}__{slug(c.norm)}__s{c.seed}"

    @property
    def area(self) -> str:
        return AREA[self.stage]

    def result_path(self, results_root: Path) -> Path:
        return Path(results_root) / self.area / "runs" / f"{self.name}.json"

    def run_dir(self, runs_root: Path) -> Path:
        return Path(runs_root) / self.area / self.name

    def weights_path(self, results_root: Path) -> Path:
        """Where this run's trained weights are committed, when :func:`keeps_weights` says so."""
        return Path(results_root) / self.area / "weights" / f"{self.name}.pt"


def keeps_weights(job: Job) -> bool:
    """The main-table runs that other stages start from: the vision models of the information analysis, and every
    family's base models (post-hoc conversion). Their weights (0.3-0.6 MB for vision, 3.4 MB for an LM) are committed
    beside the results, so that a fresh machine starts from the very models of the main table instead of training
    them again (a session's runs folder does not outlive it)."""
    c = job.config
    return job.stage == "main" and c.seed in SEEDS and (
        (c.model in VISION_FAMILIES and c.norm in INFO_NORMS) or c.norm == "base")


def keep_weights(job: Job, model_pt: Path, results_root: Path) -> None:
    """Copy a finished run's ``model.pt`` to its committed place (atomically), if it is one that is kept."""
    dest = job.weights_path(results_root)
    if keeps_weights(job) and not dest.exists() and model_pt.exists():
        _copy_atomically(model_pt, dest)


def retrained_result_path(job: Job, results_root: Path) -> Path:
    """Beside a parent's kept weights: what those weights score, when they were trained again for a later stage
    (training again need not reproduce the main-table run bit for bit)."""
    return job.weights_path(results_root).with_suffix(".json")


def _copy_atomically(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _config(model: str, norm: str, seed: int, steps: int, lr: float, **extra) -> TrainConfig:
    fam = FAMILIES[model]
    settings = dict(fam.settings, **extra)
    return TrainConfig(model=model, norm=norm, seed=seed, steps=steps, lr=lr, threads=1, progress=False,
                       checkpoint_every=100, **settings)


Size = Optional[tuple[int, int]]  # (width, depth) of a scale-ladder rung; None: the family's own size


def size_tag(size: Size) -> str:
    return f"w{size[0]}-d{size[1]}"


def _tune_job(model: str, norm: str, lr: float, size: Size = None) -> Job:
    fam = FAMILIES[model]
    if size is None:
        return Job("tune", _config(model, norm, TUNE_SEED, fam.tune_steps, lr, **fam.tune_settings), tag=f"lr{lr:g}")
    cfg = _config(model, norm, TUNE_SEED, fam.tune_steps, lr, width=size[0], depth=size[1], **fam.tune_settings)
    return Job("scale_tune", cfg, tag=f"{size_tag(size)}__lr{lr:g}")


def _scale_job(model: str, norm: str, seed: int, lr: float, size: tuple[int, int]) -> Job:
    cfg = _config(model, norm, seed, FAMILIES[model].steps, lr, width=size[0], depth=size[1])
    return Job("scale", cfg, tag=size_tag(size))


def tune_jobs(model: str, norms: Iterable[str], results_root: Optional[Path] = None) -> list[Job]:
    """The tuning runs of ``norms``: the family's grid, extended by :func:`lr_grid` as far as the results allow
    (without ``results_root``: the family's grid alone)."""
    return [_tune_job(model, norm, lr) for norm in norms
            for lr in (lr_grid(results_root, model, norm)[0] if results_root is not None else FAMILIES[model].lr_grid)]


_READ_CACHE: dict[str, tuple[tuple[int, int], dict]] = {}


def read_result(path: Path) -> Optional[dict]:
    """A result file's contents, or None when there is none (read once per change: planning asks often)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    key, stamp = str(path), (st.st_mtime_ns, st.st_size)
    hit = _READ_CACHE.get(key)
    if hit is None or hit[0] != stamp:
        hit = _READ_CACHE[key] = (stamp, json.loads(Path(path).read_text()))
    return hit[1]


def score(result: dict) -> float:
    """How a finished run ranks (higher is better): the headline metric; a diverged run ranks last."""
    if "final" not in result:
        return -math.inf
    kind = task_kind(result["config"]["model"])
    value = result["final"][kind.metric]
    return value if kind.higher_is_better else -value


def diverged(result: dict) -> bool:
    """Claim 4's divergence: the loss became non-finite, or the run ended with a training loss above its start."""
    if "final" not in result:
        return True
    curve = result.get("curve") or []
    return len(curve) >= 2 and curve[-1][1] > curve[0][1]


def next_rate(lr: float, up: bool) -> Optional[float]:
    """The rate one ladder step beyond ``lr`` (None beyond LR_MIN or LR_MAX)."""
    i = min(range(len(LR_LADDER)), key=lambda k: abs(math.log(LR_LADDER[k] / lr)))
    j = i + (1 if up else -1)
    if not 0 <= j < len(LR_LADDER):
        return None
    nxt = LR_LADDER[j]
    return float(f"{nxt:.3g}") if LR_MIN * 0.999 <= nxt <= LR_MAX * 1.001 else None


def lr_grid(results_root: Optional[Path], model: str, norm: str, size: Size = None) -> tuple[tuple[float, ...], bool]:
    """The rates ``norm`` is tuned over: the family's grid, then the next ladder rate beyond whichever edge the
    choice sits at, until the choice is interior. Returns the rates planned so far (ascending) and whether the
    grid is final (every result in and the choice interior, or at the ladder's end)."""
    grid = sorted(FAMILIES[model].lr_grid)
    if results_root is None:
        return tuple(grid), False
    while True:
        results = {lr: read_result(_tune_job(model, norm, lr, size).result_path(results_root)) for lr in grid}
        best = chosen_lr_from(results)
        if best is None:
            return tuple(grid), False
        if math.isnan(best):
            return tuple(grid), True
        edge = (best == grid[-1], best == grid[0])
        nxt = next_rate(best, up=True) if edge[0] else next_rate(best, up=False) if edge[1] else None
        if nxt is None:
            return tuple(grid), True
        grid = sorted(grid + [nxt])


def chosen_lr(results_root: Path, model: str, norm: str, size: Size = None) -> Optional[float]:
    """The best-scoring rate of the (extended) grid (ties: the lower rate); None until the grid is final.
    Returns NaN when the norm diverged at every rate."""
    grid, final = lr_grid(results_root, model, norm, size)
    if not final:
        return None
    return chosen_lr_from({lr: read_result(_tune_job(model, norm, lr, size).result_path(results_root)) for lr in grid})


def first_choice(results_root: Path, model: str, norm: str) -> Optional[float]:
    """The choice over the family's original 3-rate grid: what the page reports as having moved."""
    return chosen_lr_from({lr: read_result(_tune_job(model, norm, lr).result_path(results_root))
                           for lr in FAMILIES[model].lr_grid})


def chosen_lr_from(results: dict[float, Optional[dict]]) -> Optional[float]:
    """:func:`chosen_lr` of tuning results given by rate (None: not finished)."""
    if any(r is None for r in results.values()):
        return None
    best = max((score(r), -lr) for lr, r in results.items())
    return math.nan if best[0] == -math.inf else -best[1]


# ---- the strength ablation's extension, the stability ladder, the confirmatory pick ----------------------------

def _ablation_job(model: str, norm: str, lr: float, tag: str, seed: int) -> Job:
    return Job("ablation", _config(model, norm, seed, FAMILIES[model].tune_steps, lr), tag=tag)


def strength_grid(results_root: Path, model: str, op: str, lr: float) -> tuple[tuple[float, ...], bool]:
    """The strengths ``op``'s ablation tries on ``model``: STRENGTHS, then twice the largest while the best (mean
    score over SEEDS) is the largest tried. Returns the strengths planned so far and whether the grid is final."""
    from ..ops import COMPRESSIONS
    grid = sorted(set(STRENGTHS[op]) | {REFERENCE_STRENGTH})
    op_def = COMPRESSIONS[op.split("_", 1)[1]]
    while True:
        means = {}
        for v in grid:
            norm, tag = (op, "reference") if v == REFERENCE_STRENGTH else (f"{op}:strength={v}", "strength")
            rs = [read_result(_ablation_job(model, norm, lr, tag, s).result_path(results_root)) for s in SEEDS]
            if any(r is None for r in rs):
                return tuple(grid), False
            means[v] = sum(score(r) for r in rs) / len(rs)
        best = max(grid, key=lambda v: (means[v], -v))
        nxt = 2.0 * grid[-1]
        if best != grid[-1] or not op_def.contains(nxt) or nxt > STRENGTH_MAX:
            return tuple(grid), True
        grid.append(nxt)


def stability_rates(results_root: Path, model: str, norm: str) -> Optional[list[float]]:
    """The rates of ``norm``'s stability runs planned so far (None until its tuning grid is final): one ladder step
    beyond the largest rate tried at a time, until a run (of the tuning or of this ladder) diverged or LR_MAX."""
    grid, final = lr_grid(results_root, model, norm)
    if not final:
        return None
    if any(diverged(read_result(_tune_job(model, norm, lr).result_path(results_root))) for lr in grid):
        return []
    rates, lr = [], next_rate(grid[-1], up=True)
    while lr is not None:
        rates.append(lr)
        r = read_result(_stability_job(model, norm, lr).result_path(results_root))
        if r is None or diverged(r):
            break
        lr = next_rate(lr, up=True)
    return rates


def _stability_job(model: str, norm: str, lr: float) -> Job:
    fam = FAMILIES[model]
    return Job("stability", _config(model, norm, TUNE_SEED, fam.tune_steps, lr, **fam.tune_settings), tag=f"lr{lr:g}")


def confirmatory_candidates(results_root: Path, model: str) -> Optional[dict[str, float]]:
    """Every IBNorm configuration the confirmatory pick weighs, with its mean paired improvement over the base
    norm on SEEDS (positive: better than base; in the family's metric), or None while one is missing:
    - the three ops at strength 0.5 (main table) and with learnable strength (both at the main budget, against
      the main table's base norm);
    - on the ablation families, every strength of the (extended) strength ablation (tuning budget, against the
      ablation's own base-norm runs)."""
    root = Path(results_root)

    def improvement(jobs: list[Job], base_jobs: list[Job]) -> Optional[float]:
        rs = [read_result(j.result_path(root)) for j in jobs]
        bs = [read_result(j.result_path(root)) for j in base_jobs]
        if any(r is None for r in rs + bs):
            return None
        return sum(score(r) - score(b) for r, b in zip(rs, bs)) / len(rs)

    fam = FAMILIES[model]
    base_lr = chosen_lr(root, model, "base")
    if base_lr is None or math.isnan(base_lr):
        return None
    main_base = [Job("main", _config(model, "base", s, fam.steps, base_lr)) for s in SEEDS]
    out: dict[str, Optional[float]] = {}
    for op in IB_OPS:
        lr = chosen_lr(root, model, op)
        if lr is None:
            return None
        if math.isnan(lr):
            continue
        out[op] = improvement([Job("main", _config(model, op, s, fam.steps, lr)) for s in SEEDS], main_base)
        learn = f"{op}:learnable_strength=1"
        out[learn] = improvement([Job("learnable", _config(model, learn, s, fam.steps, lr)) for s in SEEDS], main_base)
        if model in ABLATION_MODELS:
            grid, final = strength_grid(root, model, op, lr)
            if not final:
                return None
            abl_base = [_ablation_job(model, "base", base_lr, "reference", s) for s in SEEDS]
            for v in grid:
                if v != REFERENCE_STRENGTH:
                    norm = f"{op}:strength={v}"
                    out[norm] = improvement([_ablation_job(model, norm, lr, "strength", s) for s in SEEDS], abl_base)
    if any(v is None for v in out.values()):
        return None
    return out  # type: ignore[return-value]


def confirmatory_pick(results_root: Path, model: str) -> Optional[str]:
    """The registered rule: the candidate with the largest mean paired improvement over the base norm (ties: the
    first in the order of :func:`confirmatory_candidates`). None until every candidate is in."""
    cands = confirmatory_candidates(results_root, model)
    if not cands:
        return None
    return max(cands, key=lambda k: cands[k])


def registered(results_root: Path) -> Optional[dict[str, dict]]:
    """The configurations the committed pre-registration fixes ({model: {"norm", "lr"}}), from its JSON block;
    None when there is none. A later amendment is a new file (PREREGISTRATION-2.md...), and the latest rules."""
    folder = (Path(results_root) / PREREGISTRATION).parent
    files = sorted(folder.glob("PREREGISTRATION*.md"), key=lambda p: (len(p.name), p.name))
    if not files:
        return None
    text = files[-1].read_text()
    start = text.index("```json") + len("```json")
    return json.loads(text[start:text.index("```", start)])["registered"]


def planned_jobs(results_root: Path, provisional: bool = False) -> tuple[list[Job], int]:
    """Every job whose inputs are known now, in stage order, and how many more wait on an earlier result.
    ``provisional``: a norm whose extended rate grid is not final yet counts at its first choice (the family's
    3-rate grid), so that the runs made at that choice are still recognised while its new rates run."""
    jobs, waiting = [], 0
    root = Path(results_root)

    def rate(model: str, lr_of: str, runs: int) -> Optional[float]:
        """``lr_of``'s chosen rate; None (counting ``runs`` as waiting) until it is known, or when that norm
        diverged at every rate (no further runs: the report says so)."""
        nonlocal waiting
        lr = chosen_lr(root, model, lr_of)
        if lr is None and provisional:
            lr = first_choice(root, model, lr_of)
        if lr is None:
            waiting += runs
        return None if lr is None or math.isnan(lr) else lr

    def at_chosen_rate(stage: str, model: str, norm: str, lr_of: str, tag: str = "", seeds=SEEDS, **extra) -> None:
        lr = rate(model, lr_of, len(seeds))
        if lr is not None:
            steps = extra.pop("steps", FAMILIES[model].steps)
            jobs.extend(Job(stage, _config(model, norm, s, steps, lr, **extra), tag=tag) for s in seeds)

    for group in (VISION_FAMILIES, LM_FAMILIES):  # the cheaper vision families land first
        for model in group:
            jobs.extend(tune_jobs(model, MAIN_NORMS, root))
    # The strength ablation next: with the tuning, it decides what the confirmatory test registers.
    for model in ABLATION_MODELS:
        for op in IB_OPS:
            lr = rate(model, op, len(SEEDS))
            if lr is not None:
                for v in strength_grid(root, model, op, lr)[0]:
                    if v not in STRENGTHS[op] and v != REFERENCE_STRENGTH:  # an extension: unlocked now
                        jobs.extend(_ablation_job(model, f"{op}:strength={v}", lr, "strength", s) for s in SEEDS)
    for model in FAMILIES:
        pick = confirmatory_pick(root, model)
        if pick is not None and pick not in MAIN_NORMS:
            jobs.extend(tune_jobs(model, [pick], root))  # its rate, by the same grid rule as every norm
    for model in FAMILIES:
        for norm in STABILITY_NORMS:
            rates = stability_rates(root, model, norm)
            if rates is None:
                waiting += 1
            else:
                jobs.extend(_stability_job(model, norm, lr) for lr in rates)
    for group in (VISION_FAMILIES, LM_FAMILIES):
        for model in group:
            for norm in MAIN_NORMS:
                at_chosen_rate("main", model, norm, norm, seeds=MAIN_SEEDS if norm not in PEERS else SEEDS)
    reg = registered(root)
    if reg is None:
        waiting += len(FAMILIES) * (len(CONFIRM_SEEDS) + 3)
    else:
        for model, entry in reg.items():
            fam, norm, lr = FAMILIES[model], entry["norm"], float(entry["lr"])
            base_lr = rate(model, "base", 3)
            in_main = norm in MAIN_NORMS and norm not in PEERS  # its seeds 3-7 are the main table's
            seeds = [s for s in CONFIRM_SEEDS if not (in_main and s in MAIN_SEEDS)]
            jobs.extend(Job("confirmatory", _config(model, norm, s, fam.steps, lr)) for s in seeds)
            if base_lr is not None:
                jobs.extend(Job("confirmatory", _config(model, "base", s, fam.steps, base_lr))
                            for s in CONFIRM_SEEDS if s not in MAIN_SEEDS)
    for model in VISION_FAMILIES:
        for norm in INFO_NORMS:
            lr = rate(model, norm, len(SEEDS))
            if lr is not None:
                steps = FAMILIES[model].steps
                jobs.extend(Job("info", _config(model, norm, s, steps, lr),
                                needs=Job("main", _config(model, norm, s, steps, lr))) for s in SEEDS)
    for model in VISION_FAMILIES:
        for norm in GENERALIZATION_NORMS:
            at_chosen_rate("generalization", model, norm, norm, steps=FAMILIES[model].generalization_steps,
                           train_subset=GENERALIZATION_SUBSET, eval_train=True)
    for model in ABLATION_MODELS:
        for kind, norms in ABLATION_NORMS.items():
            for norm in norms:
                at_chosen_rate("ablation", model, norm, norm.split(":")[0], tag=kind, steps=FAMILIES[model].tune_steps)
    for model in FAMILIES:
        for norm in LEARNABLE_NORMS:
            at_chosen_rate("learnable", model, norm, norm.split(":")[0])
    for model in FAMILIES:
        away = list(dict.fromkeys(list(POSTHOC_AWAY) + (posthoc_registered(reg[model]["norm"]) if reg and model in reg
                                                        else [])))
        base_lr = rate(model, "base", (len(POSTHOC_NORMS) + len(away)) * len(SEEDS))
        if reg is None or model not in reg:
            waiting += 2 * len(SEEDS)
        if base_lr is None:
            continue
        fam = FAMILIES[model]
        for seed in SEEDS:
            parent = Job("main", _config(model, "base", seed, fam.steps, base_lr))
            for norm in (*POSTHOC_NORMS, *away):
                extra = {} if norm in POSTHOC_NORMS else {"recalibrate_bn": POSTHOC_RECALIBRATE.get(model, 0)}
                cfg = _config(model, norm, seed, int(fam.steps * POSTHOC_FRACTION), base_lr * POSTHOC_LR_SCALE,
                              init_from="", **extra)  # filled in by the runner: the parent's weights on this machine
                jobs.append(Job("posthoc", cfg, needs=parent))
    for model, sizes in ((m, s) for m, s in LADDER.items() if m in FAMILIES):
        if reg is None or model not in reg:
            waiting += len(sizes) * 2 * (len(FAMILIES[model].lr_grid) + len(SEEDS))
            continue
        for size in sizes:
            for norm in ("base", reg[model]["norm"]):
                grid, final = lr_grid(root, model, norm, size)
                jobs.extend(_tune_job(model, norm, lr, size) for lr in grid)
                lr = chosen_lr(root, model, norm, size) if final else None
                if lr is None:
                    waiting += 0 if final else len(SEEDS)
                elif not math.isnan(lr):
                    jobs.extend(_scale_job(model, norm, s, lr, size) for s in SEEDS)
    # What decides the claims runs first: the tuning, the strength ablation and the stability ladders, then the
    # confirmatory test with the base norm's main-table seeds it shares, then the rest (a stable sort).
    first = {"tune": 0, "ablation": 1, "stability": 2, "confirmatory": 3}
    return sorted(jobs, key=lambda j: first.get(j.stage, 3 if j.stage == "main" and j.config.norm == "base" else 4)), waiting


def posthoc_registered(norm: str) -> list[str]:
    """The registered configuration as a post-hoc conversion, with fixed and with learnable strength."""
    name, _, opts = norm.partition(":")
    kept = [o for o in opts.split(",") if o and not o.startswith("learnable_strength")]
    fixed = f"{name}:{','.join(kept)}" if kept else name
    learn = f"{name}:{','.join(kept + ['learnable_strength=1'])}"
    if name in IB_OPS and not kept:  # the ops' lab default strength, spelled out like POSTHOC_AWAY's
        fixed, learn = f"{name}:strength={REFERENCE_STRENGTH}", f"{name}:strength={REFERENCE_STRENGTH},learnable_strength=1"
    return [fixed, learn]


def same_run(saved_config: dict, job: Job) -> bool:
    """Whether a result's config is the run ``job`` plans (the fields that decide what it computes)."""
    saved = vars(TrainConfig(**saved_config).resolved())
    want = {k: v for k, v in vars(job.config.resolved()).items() if k not in _RUNTIME_ONLY}
    return {k: saved.get(k) for k in want} == want


_RUNTIME_ONLY = ("init_from", "progress", "threads", "checkpoint_every")


def superseded(results_root: Path) -> list[Path]:
    """Result files (and kept weights) of planned names whose config the plan no longer asks for: a rate choice
    moved, so the runs at the old rate leave the tables (git history keeps them)."""
    root = Path(results_root)
    out = []
    for job in planned_jobs(root)[0]:
        path = job.result_path(root)
        r = read_result(path)
        if r is not None and not same_run(r["config"], job):
            out.append(path)
            if keeps_weights(job):
                out += [p for p in (job.weights_path(root), retrained_result_path(job, root)) if p.exists()]
    return out


def pending(results_root: Path, stages: Optional[Iterable[str]] = None, models: Optional[Iterable[str]] = None) -> tuple[list[Job], int]:
    """The planned jobs without a committed result (filtered by stage and model), and the count still waiting."""
    jobs, waiting = planned_jobs(results_root)
    stages, models = set(stages or STAGES), set(models or FAMILIES)
    todo = [j for j in jobs if j.stage in stages and j.config.model in models and not _done(j, Path(results_root))]
    return todo, waiting


def _done(job: Job, results_root: Path) -> bool:
    r = read_result(job.result_path(results_root))
    return r is not None and same_run(r["config"], job)


def prune(results_root: Path) -> list[Path]:
    """Delete the :func:`superseded` files (a rate choice moved); returns them."""
    gone = superseded(results_root)
    for path in gone:
        path.unlink()
    return gone


def seconds_per_step(results_root: Path) -> dict[tuple[str, str], float]:
    """The median single-thread wall seconds per step of the committed runs, by (model, stage): what
    :func:`projected_hours` multiplies. Evaluation is in it, so the tuning budget gets its own figure."""
    import statistics
    per: dict[tuple[str, str], list[float]] = {}
    for f in Path(results_root).glob("*/runs/*.json"):
        r = read_result(f)
        if r and r.get("wall_time_s") and r.get("stage") in AREA:
            c = r["config"]
            per.setdefault((c["model"], r["stage"]), []).append(r["wall_time_s"] / c["steps"])
    return {k: statistics.median(v) for k, v in per.items()}


def size_cost(cfg: TrainConfig) -> float:
    """How much more a step costs at a ladder rung than at the family's own size: width^1.5 x depth, which gives
    2.8x and 5.7x for the two rungs against the 2.8x and 5.2x measured per step (issue 25)."""
    from .models import get_preset
    d = get_preset(cfg.model).defaults
    return ((cfg.width or d["width"]) / d["width"]) ** 1.5 * ((cfg.depth or d.get("depth", 1)) / d.get("depth", 1))


def projected_hours(results_root: Path, todo: list[Job], waiting: int) -> dict[str, float]:
    """Single-thread hours of the pending runs by stage, from :func:`seconds_per_step` (a stage with no committed
    run of its model uses the model's tuning figure for the tuning budget and its main figure otherwise); the runs
    that wait on an earlier result are counted at the mean pending run's cost, under "waiting"."""
    rates = seconds_per_step(results_root)
    out: dict[str, float] = {}
    for job in todo:
        c = job.config
        short = c.steps <= FAMILIES[c.model].tune_steps
        sps = rates.get((c.model, job.stage)) or rates.get((c.model, "tune" if short else "main"), 0.0)
        out[job.stage] = out.get(job.stage, 0.0) + sps * c.steps * size_cost(c) / 3600
    if waiting:
        mean = sum(out.values()) / max(1, len(todo))
        out["waiting"] = mean * waiting
    return out


def run_job(job: Job, results_root: str, runs_root: str) -> dict:
    """Train one job (resuming its checkpoint) and write its result JSON; a divergence is a result too."""
    import torch
    from .train import train

    torch.set_num_threads(1)
    cfg = job.config
    _clear_stale_run_dir(job, Path(runs_root))
    if job.needs is not None:  # the parent's weights: committed, or trained again here
        weights = job.needs.weights_path(results_root)
        if not weights.exists():
            parent_dir = job.needs.run_dir(runs_root)
            train(job.needs.config, parent_dir)
            weights = parent_dir / "model.pt"
            keep_weights(job.needs, weights, Path(results_root))
            _copy_atomically(parent_dir / "result.json", retrained_result_path(job.needs, Path(results_root)))
        if job.stage == "info":
            result = {"config": dataclasses.asdict(cfg.resolved()), "rows": analyse_run(weights, cfg), "stage": job.stage,
                      "tag": job.tag, "environment": provenance()}
            atomic_write_json(job.result_path(results_root), result)
            return result
        cfg = dataclasses.replace(cfg, init_from=str(weights))
    try:
        result = train(cfg, job.run_dir(runs_root))
    except Diverged as e:
        result = {"config": dataclasses.asdict(cfg), "diverged_at": e.step, "curve": e.curve, "error": str(e),
                  "environment": provenance()}
    keep_weights(job, job.run_dir(runs_root) / "model.pt", Path(results_root))
    result = dict(result, stage=job.stage, tag=job.tag)
    if cfg.init_from:  # a path on this machine: not part of what the result means
        result["config"] = dict(result["config"], init_from=job.needs.name)
    atomic_write_json(job.result_path(results_root), result)
    return result


def _clear_stale_run_dir(job: Job, runs_root: Path) -> None:
    """A run folder left by the same name at another config (a rate choice moved) is removed, not resumed."""
    run_dir = job.run_dir(runs_root)
    for name in ("result.json", "ckpt.pt"):
        path = run_dir / name
        if not path.exists():
            continue
        if name == "result.json":
            saved = json.loads(path.read_text())["config"]
        else:
            import torch
            saved = torch.load(path, map_location="cpu", weights_only=False)["config"]
        if not same_run(saved, dataclasses.replace(job, config=dataclasses.replace(job.config, init_from=""))):
            shutil.rmtree(run_dir)
        return


def analyse_run(run_dir: Path, cfg: TrainConfig) -> list[dict]:
    """The information quantities of a finished vision run's weights (:mod:`ibnorm.lab.info.analysis`): its folder
    or its weights file."""
    from .info.analysis import analyse_model
    from .train import load_trained

    model, task = load_trained(cfg, run_dir)
    v = task.vision
    return analyse_model(model, v.train_x, v.train_y, v.test_x, v.test_y, task.kind.input_key)


def describe(result: dict) -> str:
    c = result["config"]
    if "rows" in result:
        pen = result["rows"][-1]
        return f"{c['model']} {c['norm']} s{c['seed']}: penultimate IB {pen['IB']:.3f}, I(T;Y) probe {pen['I_TY_probe']:.3f}"
    if "final" not in result:
        return f"{c['model']} {c['norm']} s{c['seed']} lr {c['lr']:g}: diverged at step {result['diverged_at']}"
    kind = task_kind(c["model"])
    return (f"{c['model']} {c['norm']} s{c['seed']} lr {c['lr']:g}: {kind.metric} {result['final'][kind.metric]:.4f} "
            f"({result['wall_time_s']:.0f}s)")


def startable(todo: list[Job], running: list[Job], slots: int, results_root: Path) -> list[Job]:
    """The next ``slots`` jobs of ``todo`` to start beside ``running``: none twice, and none whose parent has no
    committed weights while a running job needs that parent too (it is training it now: the post-hoc runs of a
    seed share one parent, which would otherwise be trained by two processes at once)."""
    names = {j.name for j in running}
    training = {j.needs.name for j in running if j.needs is not None and not j.needs.weights_path(results_root).exists()}
    chosen = []
    for job in todo:
        if len(chosen) >= slots:
            break
        if job.name in names:
            continue
        if job.needs is not None and not job.needs.weights_path(results_root).exists():
            if job.needs.name in training:
                continue
            training.add(job.needs.name)
        chosen.append(job)
        names.add(job.name)
    return chosen


def reproduce(results_root: str | Path = "results", runs_root: str | Path = "runs/reproduction", jobs: int = 1,
              stages: Optional[Iterable[str]] = None, models: Optional[Iterable[str]] = None,
              limit: int = 0, log: Optional[Callable[[str], None]] = None, progress: bool = True) -> int:
    """Run every pending job, ``jobs`` single-threaded processes at a time (1: in this process), planning again
    as results land (a tuning result unlocks its family's seeds). ``limit`` stops after that many runs (0 = all).
    Killed, it resumes: finished results are skipped and unfinished runs continue from their checkpoints.
    Returns the number of runs made."""
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    import multiprocessing
    from tqdm import tqdm

    results_root, runs_root = str(results_root), str(runs_root)
    done, t0, in_flight = 0, time.time(), {}
    # A bar on a terminal; a log (a background run writing to a file) gets one line per finished run only.
    bar = tqdm(desc="reproduce", unit="run", file=sys.stderr, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    log = log or (lambda s: bar.write(s, file=sys.stderr))
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) if jobs > 1 else None
    try:
        while True:
            for path in prune(Path(results_root)):
                log(f"superseded (a rate choice moved; git history keeps it): {path}")
            todo, waiting = pending(results_root, stages, models)
            bar.total = done + len(todo) + waiting
            bar.refresh()
            slots = jobs - len(in_flight)
            if limit:
                slots = min(slots, limit - done - len(in_flight))
            for job in startable(todo, list(in_flight.values()), slots, Path(results_root)):
                if pool is None:  # in this process: no start-up cost, and Ctrl-C stops at once
                    fut: Future = Future()
                    fut.set_result(run_job(job, results_root, runs_root))
                else:
                    fut = pool.submit(run_job, job, results_root, runs_root)
                in_flight[fut] = job
            if not in_flight:
                log(f"reproduce: {done} runs made in {time.time() - t0:.0f}s; {len(todo)} pending, {waiting} waiting "
                    f"on a tuning result")
                return done
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = in_flight.pop(fut)
                result = fut.result()  # an error in a run stops the reproduction: it is a bug, not a result
                done += 1
                bar.update(1)
                log(f"[{done} done, {time.time() - t0:.0f}s] {job.name}: {describe(result)}")
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
