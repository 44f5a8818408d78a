"""IBSyncBatchNorm's CPU paths against nn.BatchNorm2d, forward + backward, in one process with the sum over processes
the identity (what a process of a group computes, without the all-reduce's cost).

    MALLOC_MMAP_MAX_=0 python benchmarks/sync_batchnorm.py [--threads 2] [--out benchmarks/results/sync_batchnorm_cpu.md]

Median of 7 interleaved rounds; every ratio is against nn.BatchNorm2d in the same layout, measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import ibnorm
from ibnorm.atomic import atomic_write_text


def timed(m: torch.nn.Module, x0: torch.Tensor) -> float:
    x = x0.clone().requires_grad_(True)
    t = time.perf_counter()
    y = m(x)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    p.add_argument("--out", help="write the markdown table here too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    identity = lambda: (lambda t: t.clone())  # the sum over a process group of one
    lines = ["# IBSyncBatchNorm on CPU, forward + backward, 64x64x32x32 float32",
             "", f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, median of "
             f"{args.rounds} interleaved rounds, ratio to `nn.BatchNorm2d` in the same layout. Made by "
             "`MALLOC_MMAP_MAX_=0 python benchmarks/sync_batchnorm.py" + (f" --threads {args.threads}" if args.threads != 2 else "")
             + (f" --out {args.out}" if args.out else "") + "`.", "",
             "| layout | op | IBBatchNorm2d (one process) | IBSyncBatchNorm: C++ passes | IBSyncBatchNorm: reference |",
             "|---|---|---|---|---|"]
    for layout in ("NCHW", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x0 = torch.randn(64, 64, 32, 32).contiguous(memory_format=fmt)
        for op in ("none", "power", "log", "tanh"):
            cases = {"bn": torch.nn.BatchNorm2d(64)}
            for name, impl, sync in (("local", "auto", False), ("sync", "auto", True), ("sync ref", "reference", True)):
                m = ibnorm.IBBatchNorm2d(64, compression=op, impl=impl)
                if sync:
                    m._reduce = identity
                cases[name] = m
            times: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(args.rounds):
                for name, m in cases.items():
                    times[name].append(timed(m, x0))
            med = {k: statistics.median(v) for k, v in times.items()}
            cell = lambda k: f"{med[k] / med['bn']:.2f}x ({med[k] * 1e3:.1f} ms)"
            lines.append(f"| {layout} | {op} | {cell('local')} | {cell('sync')} | {cell('sync ref')} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
