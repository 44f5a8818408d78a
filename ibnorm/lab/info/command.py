"""``ibnorm info RUN_DIR [RUN_DIR ...]``: information quantities of finished runs, CSV and plots."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from ...atomic import atomic_write_text
from ..records import write_csv
from .recorder import DEFAULT_MAX_DIM, read_info_csv, write_info_csv


def analyse_run(run_dir: Path, method: str, beta: float, probe: int, max_dim: int) -> list[dict]:
    """The trajectory recorded during training (``info.csv``) when it used these settings; otherwise the
    final model's rows, computed once and kept beside it (``info.csv`` itself is never overwritten)."""
    from ..train import TrainConfig, load_trained
    from .recorder import InfoRecorder

    result = json.loads((run_dir / "result.json").read_text())
    cfg = TrainConfig(**result["config"])
    recorded = run_dir / "info.csv"
    # the trainer records with the recorder's defaults, its own probe size, Renyi and beta 0.1
    if recorded.exists() and probe == cfg.info_probe and max_dim == DEFAULT_MAX_DIM:
        rows = read_info_csv(recorded)
        if rows and all(r["method"] == method and r["beta"] == beta for r in rows):
            return [dict(r, **cfg.run_fields()) for r in rows]
    final = run_dir / f"info-final-{method}-beta{beta:g}-probe{probe}-dim{max_dim}.csv"
    if final.exists():
        return [dict(r, **cfg.run_fields()) for r in read_info_csv(final)]
    if recorded.exists():
        print(f"{recorded} was recorded with other settings; analysing the final model only ({final.name})",
              file=sys.stderr)
    model, task = load_trained(cfg, run_dir)
    px, py = task.probe(probe)
    rec = InfoRecorder(model, px, py, task.kind.name, method=method, beta=beta, max_dim=max_dim, vocab_size=task.vocab_size)
    rows = [dict(r, **cfg.run_fields()) for r in rec.record(cfg.steps)]
    write_info_csv(final, rows)
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    from .plots import information_planes, layer_bars
    from .summary import SUMMARY_COLUMNS, group_by_norm, mean_rows, summary_table
    out = Path(args.out)
    runs: list[list[dict]] = []
    for d in args.run_dirs:
        d = Path(d)
        if not (d / "result.json").exists():
            raise FileNotFoundError(f"{d} is not a finished run (no result.json); train it first")
        runs.append(analyse_run(d, args.method, args.beta, args.probe, args.max_dim))
    write_info_csv(out / "info.csv", [r for rows in runs for r in rows])
    groups = group_by_norm(runs)
    # several seeds of one norm: one panel (the seed mean) and bars with the seed spread
    merged = {(f"{name} (mean of {len(seeds)} seeds)" if len(seeds) > 1 else f"{name} s{next(iter(seeds))}"):
              mean_rows(seeds) for name, seeds in groups.items()}
    information_planes(merged, out / "info_plane.png")
    layer_bars(merged, out / "info_layers.png")
    table, report = summary_table(groups, args.base)
    write_csv(out / "info_summary.csv", table, SUMMARY_COLUMNS)
    atomic_write_text(out / "info_summary.md", f"# Information quantities ({args.method}, beta = {args.beta:g})\n\n"
                      + report)
    print(report)
    print(f"wrote {out}/info.csv, info_summary.csv, info_summary.md, info_plane.png, info_layers.png", file=sys.stderr)
    return 0


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="information planes, IB values and variance contraction of finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories (with result.json)")
    p.add_argument("--out", default="results/info", help="output folder (default: results/info)")
    p.add_argument("--method", default="renyi", choices=["renyi", "ksg", "binning"],
                   help="MI estimator (default: renyi)")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the IB value I(T;Y) - beta I(X;T) (default: 0.1)")
    p.add_argument("--probe", type=int, default=512, help="held-out probe examples (default: 512)")
    p.add_argument("--max-dim", type=int, default=DEFAULT_MAX_DIM,
                   help=f"random projection of wider layers to this many dims (default: {DEFAULT_MAX_DIM})")
    p.add_argument("--base", default=None, help="the norm differences are taken to, as 'MODEL NORM' "
                   "(default: the run whose norm is 'base', else the first)")
    p.set_defaults(fn=cmd_info)
