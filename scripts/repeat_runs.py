"""Train committed reproduction runs again on this machine and record how far each lands from its committed result.

    python scripts/repeat_runs.py [--runs main__gpt2-mini__base__s0 main__llama-mini__base__s0]
                                  [--out results/reproducibility/repeats]

Each run is trained with exactly its committed config (one thread, in a scratch folder under runs/repeats/),
and the two results are compared: the final metric, the training curve point by point (the first step where
they differ, and by how much), and what decides a run's numbers across machines (the environment each recorded).
Writes ``OUT.json`` (every record) and ``OUT.md`` (a table), each atomically; the page quotes them. Resumable:
a finished repeat is read back, not trained again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibnorm.atomic import atomic_write_json, atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("main__gpt2-mini__base__s0", "main__llama-mini__base__s0")
ENV_KEYS = ("platform", "cpu_model", "cpu_capability", "torch", "transformers", "numpy", "mkl", "onednn", "kernel")


def first_difference(a: list, b: list) -> tuple[int | None, float]:
    """The first curve step where the two mean losses differ, and the largest absolute difference anywhere."""
    first, largest = None, 0.0
    for (step, x), (_, y) in zip(a, b):
        if x != y and first is None:
            first = step
        largest = max(largest, abs(x - y))
    return first, largest


def repeat(name: str, runs_root: Path) -> dict:
    import torch
    from ibnorm.lab.tasks import task_kind
    from ibnorm.lab.train import TrainConfig, train
    committed = json.loads((REPO / "results" / "reproduction" / "runs" / f"{name}.json").read_text())
    cfg = dataclasses.replace(TrainConfig(**committed["config"]), progress=False, threads=1)
    torch.set_num_threads(1)
    again = train(cfg, runs_root / name)
    metric = task_kind(cfg.model).metric
    first, largest = first_difference(committed["curve"], again["curve"])
    return {"run": name, "metric": metric, "committed": committed["final"][metric], "here": again["final"][metric],
            "difference": again["final"][metric] - committed["final"][metric], "curves_first_differ_at": first,
            "largest_curve_difference": largest,
            "environment": {"committed": {k: committed.get("environment", {}).get(k) for k in ENV_KEYS},
                            "here": {k: again["environment"].get(k) for k in ENV_KEYS}},
            "wall_time_s": again["wall_time_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="committed run names (main__...)")
    parser.add_argument("--out", default="results/reproducibility/repeats", help="output path without suffix")
    parser.add_argument("--runs-dir", default="runs/repeats", help="scratch folder for the retrained runs")
    args = parser.parse_args(argv)
    for name in args.runs:
        if not (REPO / "results" / "reproduction" / "runs" / f"{name}.json").exists():
            print(f"repeat_runs: error: --runs: no committed run {name!r} in results/reproduction/runs", file=sys.stderr)
            return 2
    records = [repeat(name, Path(args.runs_dir)) for name in args.runs]
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"command": "python scripts/repeat_runs.py " + " ".join(argv or sys.argv[1:]),
                                                 "records": records})
    lines = ["# Committed runs trained again on another machine", "",
             f"Written by `python scripts/repeat_runs.py` ({out.with_suffix('.json').name} has every field).", "",
             "| run | committed | here | difference | curves first differ at step | largest curve difference |",
             "|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['run']} | {r['committed']:.6f} | {r['here']:.6f} | {r['difference']:+.2e} | "
                     f"{r['curves_first_differ_at'] if r['curves_first_differ_at'] is not None else 'never'} | "
                     f"{r['largest_curve_difference']:.2e} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
