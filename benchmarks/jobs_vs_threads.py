"""Two single-threaded runs at once, or one run on two threads? The throughput behind `ibnorm reproduce --jobs`.

    MALLOC_MMAP_MAX_=0 python benchmarks/jobs_vs_threads.py [--out benchmarks/results/jobs_vs_threads.md]

Each measurement is the median of 12 training steps (forward, backward, AdamW) of a base-norm preset on synthetic
batches, in a fresh process; "2 x 1" runs two such processes at the same time. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

MODELS = ("gpt2-mini", "vit-mini", "resnet-mini")


def step_ms(model: str, threads: int) -> float:
    """Run in a child process: the median training-step time of ``model`` on ``threads`` threads, in ms."""
    import time
    import torch
    from ibnorm.lab.models import build_model
    from ibnorm.lab.tasks import task_kind
    from ibnorm.lab.train import TASK_DEFAULTS
    torch.set_num_threads(threads)
    net, _ = build_model(model, "base")
    kind = task_kind(model)
    batch = kind.synthetic_batch(TASK_DEFAULTS[kind.name]["batch_size"])
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    times = []
    for _ in range(12):
        t = time.perf_counter()
        loss, _ = kind.loss(net, batch[kind.input_key], batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times)[6] * 1e3


def _spawn(model: str, threads: int) -> subprocess.Popen:
    code = f"import json, sys; sys.path.insert(0, {sys.path[0]!r}); from jobs_vs_threads import step_ms; " \
           f"print(json.dumps(step_ms({model!r}, {threads})))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the markdown table here too")
    args = p.parse_args()
    import torch
    lines = ["# Two single-threaded runs at once, or one run on two threads?", "",
             f"CPU capability {torch.backends.cpu.get_cpu_capability()}; median of 12 training steps of each base-norm "
             "preset (AdamW, the task's default batch). Made by `MALLOC_MMAP_MAX_=0 python benchmarks/jobs_vs_threads.py"
             + (f" --out {args.out}" if args.out else "") + "`.", "",
             "| model | 1 run, 2 threads: ms/step | 2 runs, 1 thread each: ms/step | steps/s, 1x2 | steps/s, 2x1 | 2x1 gain |",
             "|---|---|---|---|---|---|"]
    for model in MODELS:
        one = float(_spawn(model, 2).communicate()[0])
        pair = [_spawn(model, 1) for _ in range(2)]
        two = [float(q.communicate()[0]) for q in pair]
        rate1, rate2 = 1e3 / one, sum(1e3 / t for t in two)
        lines.append(f"| {model} | {one:.1f} | {two[0]:.1f} / {two[1]:.1f} | {rate1:.2f} | {rate2:.2f} | {rate2 / rate1:.2f}x |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        from ibnorm.atomic import atomic_write_text
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
