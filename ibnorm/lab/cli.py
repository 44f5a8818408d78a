"""The ``ibnorm`` console script: parses arguments, then calls the modules that do the work."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

from .bench import add_bench_parser
from .info.command import add_info_parser
from .models import PRESETS
from .records import command_line
from .report import summarize
from .reproduce import FAMILIES, STAGES
from .sweep import ABLATIONS, ALL_MODELS, GRID_PRESETS, IB_OPS, ablation_norms, run_grid, slug
from .train import FIELD_HELP, TrainConfig, field_default, train


def _bool(s: str) -> bool:
    """A strict boolean: 'maybe' is an error, not False."""
    low = s.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (1/0, yes/no, on/off); got {s!r}")


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def _norm_list(s: str) -> list[str]:
    """Norm specs separated by ';' (or ',' when no spec has options): 'base,ib_tanh' or 'ib_tanh:strength=0.1;base'."""
    return [x for x in (s.split(";") if ":" in s else s.split(",")) if x]


_OWN_FLAGS = {"model", "norm", "seed", "progress"}  # TrainConfig fields with flags of their own (or none)


def _add_train_args(p: argparse.ArgumentParser, preset: bool = False) -> None:
    where = " in train; a grid takes its preset's" if preset else ""
    for f in dataclasses.fields(TrainConfig):
        if f.name in _OWN_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = f"{FIELD_HELP[f.name]} (default: {field_default(f.name)}{where})"
        if f.type in ("bool",) or isinstance(f.default, bool):
            p.add_argument(flag, type=_bool, default=None, metavar="BOOL", help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
            p.add_argument(flag, type=kind, default=None, help=text)


def _overrides(args: argparse.Namespace) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - _OWN_FLAGS
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def read_config_file(path: str) -> dict:
    """A TOML file of TrainConfig fields (a recipe): every key must be a field, with a value of its type."""
    import tomllib
    try:
        with open(path, "rb") as f:
            fields = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"--config: cannot read {path} ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config: {path} is not valid TOML ({e})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(fields) - known)
    if bad:
        raise ValueError(f"--config: {path} sets {', '.join(bad)}, which are not TrainConfig fields "
                         f"(see `ibnorm train --help`)")
    return fields


def cmd_train(args: argparse.Namespace) -> int:
    fields = read_config_file(args.config) if args.config else {}
    for key in ("model", "norm", "seed"):  # a flag given on the command line wins over the file
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if "model" not in fields:
        raise ValueError("--model is required (on the command line or in the --config file)")
    if fields["model"] not in PRESETS:
        raise ValueError(f"--model must be one of {', '.join(PRESETS)}; got {fields['model']!r}")
    fields.setdefault("norm", "base")
    fields.setdefault("seed", 0)
    args.model, args.norm, args.seed = fields["model"], fields["norm"], fields["seed"]
    cfg = TrainConfig(**{**fields, "progress": not args.no_progress, **_overrides(args)})
    out = Path(args.out or f"runs/train/{args.model}/{slug(args.norm)}/seed{args.seed}")
    finished = (out / "result.json").exists()
    result = train(cfg, out)
    if finished:
        print(f"{out} already holds this finished run; nothing was trained (delete it to train again)", file=sys.stderr)
    if "stopped_at" in result:
        print(f"stopped after step {result['stopped_at']}; run the same command to continue ({result['checkpoint']})",
              file=sys.stderr)
        return 0
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the final result is printed once, by rank 0
        return 0
    if args.info_every:
        print(f"information-plane records: {out / 'info.csv'}", file=sys.stderr)
    print(json.dumps(result["final"], indent=1))
    print(f"run directory: {out}", file=sys.stderr)
    return 0


def grid_name(base: str, args: argparse.Namespace, changed: dict[str, list]) -> str:
    """A grid's folder name: its preset, plus every change made to it (models, norms, seeds, training settings), so
    that a changed grid never writes where the unchanged one did (``quick``, ``quick-steps3``, ``quick-norms-2``)."""
    parts = [base] + [f"{k}-{len(v)}" if k == "norms" else f"{k}-{'_'.join(map(str, v))}" for k, v in changed.items() if v]
    parts += [f"{k.replace('_', '')}{v}" for k, v in sorted(_overrides(args).items())]
    return slug("-".join(parts))


def _grid(args: argparse.Namespace, name: str, preset) -> int:
    # The committed results/ folders change only when asked for by name (--results-dir): the default is runs/,
    # which git ignores, so the main job leaves a checkout clean.
    results_dir = Path(args.results_dir or f"runs/{name}")
    runs_dir = Path(args.runs_dir or f"runs/{name}/train")
    results = run_grid(name, preset, results_dir, runs_dir, progress=not args.no_progress, **_overrides(args))
    table = summarize(results, results_dir, f"ibnorm {name}", command_line())
    print(table)
    print(f"\nresults: {results_dir}/table.md, {results_dir}/runs.csv; plots: {results_dir}/curves_*.png")
    return 0


def _nonempty(flag: str, values: Optional[list]) -> Optional[list]:
    if values is not None and not values:
        raise ValueError(f"{flag} must name at least one value; got an empty list")
    return values


def cmd_compare(args: argparse.Namespace) -> int:
    preset = GRID_PRESETS[args.preset]
    models, norms, seeds = (_nonempty(f"--{k}", getattr(args, k)) for k in ("models", "norms", "seeds"))
    bad = [m for m in models or [] if m not in ALL_MODELS]
    if bad:
        raise ValueError(f"--models accepts {', '.join(ALL_MODELS)}; got {', '.join(bad)}")
    preset = dataclasses.replace(preset, models=tuple(models or preset.models), norms=tuple(norms or preset.norms),
                                 seeds=tuple(preset.seeds if seeds is None else seeds))
    return _grid(args, grid_name(args.preset, args, {"models": models, "norms": norms, "seeds": seeds}), preset)


def cmd_ablate(args: argparse.Namespace) -> int:
    base = GRID_PRESETS[args.preset]
    ops = _nonempty("--ops", args.ops)
    bad = [op for op in ops if op not in IB_OPS]
    if bad:
        raise ValueError(f"--ops accepts {', '.join(IB_OPS)}; got {', '.join(bad)}")
    models = _nonempty("--models", args.models)
    bad = [m for m in models if m not in ALL_MODELS]
    if bad:
        raise ValueError(f"--models accepts {', '.join(ALL_MODELS)}; got {', '.join(bad)}")
    seeds = _nonempty("--seeds", args.seeds)
    norms = ablation_norms(args.kind, ops)
    preset = dataclasses.replace(base, models=tuple(models), norms=tuple(norms),
                                 seeds=tuple(base.seeds if seeds is None else seeds))
    changed = {"models": models if models != ["vit-mini"] else None, "ops": ops if ops != list(IB_OPS) else None,
               "seeds": seeds}
    return _grid(args, grid_name(f"ablate-{args.kind}-{args.preset}", args, changed), preset)


def build_parser() -> argparse.ArgumentParser:
    """The ``ibnorm`` command line: train, compare, ablate, info, bench."""
    parser = argparse.ArgumentParser(prog="ibnorm", description="IBNorm experiments: train, compare, ablate, info, bench")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model with one norm (resumes if killed)")
    p.add_argument("--model", help="model preset: a mini one (gpt2-mini, llama-mini, vit-mini, resnet-mini) or one "
                   "at scale (gpt2-124m, gpt2-355m, llama-60m/130m/350m, vit-s16, resnet18, resnet50); required here or in "
                   "--config (default: none)")
    p.add_argument("--norm", help="base, ib_power, ib_log, ib_tanh, normalnorm, dyt, derf, a registry name; "
                   "options as NAME:key=value,... (default: base)")
    p.add_argument("--seed", type=int, help="seed of the initialization and the batches (default: 0)")
    p.add_argument("--config", help="a TOML file of training settings (recipes/*.toml); flags override it "
                   "(default: none)")
    p.add_argument("--out", help="run directory (default: runs/train/MODEL/NORM/seedK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_train_args(p)
    p.set_defaults(fn=cmd_train)

    for name, help_ in (("compare", "train the grid models x norms x seeds and report"),
                        ("ablate", "the paper's ablations: strength, order, affine")):
        p = sub.add_parser(name, help=help_)
        if name == "ablate":
            p.add_argument("kind", choices=ABLATIONS, help="which ablation")
            p.add_argument("--models", type=_csv(str), default=["vit-mini"], help="comma-separated (default: vit-mini)")
            p.add_argument("--ops", type=_csv(str), default=list(IB_OPS),
                           help=f"comma-separated (default: {','.join(IB_OPS)})")
            p.add_argument("--preset", choices=sorted(GRID_PRESETS), default="quick",
                           help="training settings from this preset (default: quick)")
        else:
            p.add_argument("--preset", choices=sorted(GRID_PRESETS), default="quick", help="the grid (default: quick)")
            p.add_argument("--models", type=_csv(str), help="comma-separated (default: the preset's)")
            p.add_argument("--norms", type=_norm_list, help="comma- or ;-separated norm specs (default: the preset's)")
        p.add_argument("--seeds", type=_csv(int), help="comma-separated (default: the preset's)")
        p.add_argument("--results-dir", help="where tables go (default: runs/GRID, which git ignores; name a folder "
                       "under results/ to regenerate a committed one)")
        p.add_argument("--runs-dir", help="where checkpoints go (default: runs/GRID/train)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        _add_train_args(p, preset=True)
        p.set_defaults(fn=cmd_compare if name == "compare" else cmd_ablate)

    p = sub.add_parser("reproduce", help="train whatever the reproduction still lacks (resumable; skips committed runs)")
    p.add_argument("--jobs", type=int, default=2, help="single-threaded runs at once (default: 2, one per core here)")
    p.add_argument("--stages", type=_csv(str), help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--models", type=_csv(str), help="comma-separated subset of the families (default: all four)")
    p.add_argument("--limit", type=int, default=0, help="stop after this many runs (default: 0 = all)")
    p.add_argument("--dry-run", action="store_true", help="list the pending runs and stop")
    p.add_argument("--results-dir", default="results", help="where run results go (default: results)")
    p.add_argument("--runs-dir", default="runs/reproduction", help="checkpoints and weights (default: runs/reproduction)")
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("prepare-text", help="tokenize text files into train.bin/val.bin (uint16) and meta.json, "
                       "nanoGPT's format, for `ibnorm train --data DIR`")
    p.add_argument("source", help="a text file, a folder whose *.txt files are read (sorted), or a dataset saved by "
                   "Hugging Face datasets (save_to_disk; needs ibnorm[hf])")
    p.add_argument("--text-column", default="text", help="a saved dataset's text column (default: text)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (BPE, offline) or byte (default: gpt2)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="the end of each file kept for validation "
                   "(default: 0.1)")
    p.add_argument("--workers", type=int, default=0, help="tokenizing processes (default: one per CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_prepare_text)

    p = sub.add_parser("preregister", help="write results/confirmatory/PREREGISTRATION.md once the rule can pick "
                       "every family's configuration (commit it alone, before any confirmatory run)")
    p.add_argument("--results-dir", default="results", help="where the run files are (default: results)")
    p.add_argument("--dry-run", action="store_true", help="print the registration instead of writing it")
    p.set_defaults(fn=cmd_preregister)

    p = sub.add_parser("report", help="rebuild RESULTS.md, every runs.csv and the figures from the committed run files")
    p.add_argument("--results-dir", default="results", help="where the run files are (default: results)")
    p.add_argument("--page", default="RESULTS.md", help="the page to write (default: RESULTS.md)")
    p.add_argument("--readme", default=None, help="the README whose verdict paragraph to rewrite (default: README.md "
                   "when --results-dir is the default and README.md has the verdict markers, as this repository's does)")
    p.add_argument("--no-readme", action="store_true", help="leave every README alone")
    p.set_defaults(fn=cmd_report)

    add_info_parser(sub)
    add_bench_parser(sub)
    return parser


def cmd_prepare_text(args: argparse.Namespace) -> int:
    from .data.tokens import prepare_text
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0; got {args.workers}")
    meta = prepare_text(args.source, args.out, args.tokenizer, args.val_fraction, args.workers, not args.no_progress,
                        args.text_column)
    print(f"wrote {args.out}/train.bin ({meta['train_tokens']:,} tokens), val.bin ({meta['val_tokens']:,}) and "
          f"meta.json; train with: ibnorm train --model gpt2-124m --data {args.out}", file=sys.stderr)
    return 0


def cmd_preregister(args: argparse.Namespace) -> int:
    import subprocess
    from . import preregister as P
    root = Path(args.results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--results-dir: {root} is not a folder")
    commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    if args.dry_run:
        wait = P.missing(root)
        if wait:
            raise ValueError("the registration waits on " + "; ".join(wait))
        print(P.registration(root, commit)[0])
        return 0
    path = P.write(root, commit)
    print(f"wrote {path}: commit it alone, now (git add {path} && git commit)", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .results import build_report
    if not Path(args.results_dir).is_dir():
        raise FileNotFoundError(f"--results-dir: {args.results_dir} is not a folder")
    readme = args.readme
    if args.no_readme and readme:
        raise ValueError("--readme and --no-readme: give one of them")
    from .results.readme import START, verdict_block
    if (readme is None and not args.no_readme and args.results_dir == "results" and Path("README.md").is_file()
            and START in Path("README.md").read_text()):
        readme = "README.md"  # ibnorm's own checkout: its front page's verdict follows the committed runs
    if readme and not Path(readme).is_file():
        raise FileNotFoundError(f"--readme: {readme} is not a file")
    if readme:
        verdict_block(Path(readme))  # before anything is written: a README named but without the block is refused
    build_report(args.results_dir, args.page, readme=readme)
    print(f"wrote {args.page}{f', the verdict in {readme}' if readme else ''} and {args.results_dir}/*/runs.csv",
          file=sys.stderr)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import pending, projected_hours, reproduce
    for name, values, allowed in (("stages", args.stages, STAGES), ("models", args.models, FAMILIES)):
        bad = [v for v in values or [] if v not in allowed]
        if bad:
            raise ValueError(f"--{name} accepts {', '.join(allowed)}; got {', '.join(bad)}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1; got {args.jobs}")
    if args.dry_run:
        todo, waiting = pending(Path(args.results_dir), args.stages, args.models)
        for job in todo:
            print(f"{job.area}/{job.name}")
        print(f"{len(todo)} runs pending; {waiting} more wait on an earlier result (a tuning choice, the strength "
              f"ablation, the pre-registration)", file=sys.stderr)
        hours = projected_hours(Path(args.results_dir), todo, waiting)
        print("projected single-thread hours: " + ", ".join(f"{k} {v:.1f}" for k, v in hours.items())
              + f"; {sum(hours.values()):.1f} in all", file=sys.stderr)
        return 0
    reproduce(args.results_dir, args.runs_dir, args.jobs, args.stages, args.models, args.limit)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ibnorm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be made or written (an --out under a regular file...)
        print(f"ibnorm {args.command}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
