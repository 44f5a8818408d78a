"""``ibnorm bench``: time and memory of IBNorm against PyTorch's norms and the peers, as ratios.

Every figure is a ratio to the PyTorch base norm measured in the same round (rounds interleave all
candidates, and the median over rounds is reported), because the machines here are shared and noisy.
Saved-activation bytes count every tensor autograd keeps for backward (unique storages, the input
included). Bandwidth: the forward's bytes (read input, write output) over its time, next to a copy of
the same bytes timed in the same round. The allocator setting in force is recorded: run with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184`` so that page faults of fresh 32 MiB
tensors do not dominate (see the README's benchmark section).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

import ibnorm

from ..atomic import atomic_write_json, atomic_write_text
from .records import command_line, provenance
from .tasks import task_kind

OPS = (("power", 0.7), ("log", 0.7), ("tanh", 0.7))  # strengths off 0.5 and 1, which are special-cased fast
ROW_SHAPES = ((8192, 768), (4096, 2048), (32768, 256))
NCHW = (64, 64, 32, 32)


def _candidates_rows(dim: int, dtype: torch.dtype) -> dict[str, nn.Module]:
    kw = dict(dtype=dtype)
    c = {"nn.LayerNorm": nn.LayerNorm(dim, **kw), "nn.RMSNorm": nn.RMSNorm(dim, **kw),
         "DyT": ibnorm.DynamicTanh(dim, **kw), "NormalNorm": ibnorm.LayerNormalNorm(dim, **kw)}
    for op, lam in OPS:
        c[f"IB-{op} ref"] = ibnorm.IBLayerNorm(dim, compression=op, strength=lam, impl="reference", **kw)
        c[f"IB-{op} fast"] = ibnorm.IBLayerNorm(dim, compression=op, strength=lam, **kw)
    # The same kernel at the identity op: its memory passes without any transcendental (the floor).
    c["IB-none fast"] = ibnorm.IBLayerNorm(dim, compression="none", **kw)
    return c


def _candidates_nchw(ch: int, dtype: torch.dtype) -> dict[str, nn.Module]:
    kw = dict(dtype=dtype)
    c = {"nn.BatchNorm2d": nn.BatchNorm2d(ch, **kw), "DyT": ibnorm.DynamicTanh(ch, channels_last=False, **kw),
         "NormalNorm": ibnorm.BatchNormalNorm2d(ch, **kw)}
    for op, lam in OPS:
        c[f"IB-{op} ref"] = ibnorm.IBBatchNorm2d(ch, compression=op, strength=lam, impl="reference", **kw)
        c[f"IB-{op} fast"] = ibnorm.IBBatchNorm2d(ch, compression=op, strength=lam, **kw)
    c["IB-none fast"] = ibnorm.IBBatchNorm2d(ch, compression="none", **kw)
    return c


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.detach().requires_grad_(True))
    return sum(seen.values())


def _time(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def transcendental_costs(numel: int) -> dict[str, Callable[[], None]]:
    """Each op's s(u) alone, as the C++ kernel computes it: one forward evaluation (s) and one backward evaluation
    (s and s') over ``numel`` float32 values, nothing stored. With the identity-op kernel's time this is the floor
    of a fused IBNorm: every memory pass plus the transcendental it cannot skip. Empty without the extension."""
    from ibnorm.kernels import cpu
    from ibnorm.ops import COMPRESSIONS
    ext = cpu.load()
    if ext is None:
        return {}
    u = torch.randn(numel)  # float32 whatever the case's dtype: the kernel's math is float32

    def cost(code: int, lam: float) -> Callable[[], None]:
        return lambda: (ext.op_cost(u, code, lam, False), ext.op_cost(u, code, lam, True))
    return {op: cost(COMPRESSIONS[op].code, lam) for op, lam in OPS}


def measure(cands: dict[str, nn.Module], x: torch.Tensor, base: str, rounds: int) -> dict:
    grad = torch.randn_like(x)
    xg = x.detach().requires_grad_(True)
    out = torch.empty_like(x)

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwdbwd(m):
        y = m(xg)
        y.backward(grad)
        xg.grad = None
        for p in m.parameters():
            p.grad = None

    for m in cands.values():  # warm-up: builds, caches, first-touch of the buffers
        fwd(m)
        fwdbwd(m)
    t_f = {k: [] for k in cands}
    t_fb = {k: [] for k in cands}
    floors = transcendental_costs(x.numel())
    t_floor = {k: [] for k in floors}
    t_copy = []
    for _ in range(rounds):
        t_copy.append(_time(lambda: out.copy_(x)))
        for k, fn in floors.items():
            t_floor[k].append(_time(fn))
        for k, m in cands.items():
            t_f[k].append(_time(lambda: fwd(m)))
            t_fb[k].append(_time(lambda: fwdbwd(m)))
    nbytes = 2 * x.numel() * x.element_size()
    base_saved = saved_bytes(cands[base], x)
    res = {}
    for k, m in cands.items():
        sb = saved_bytes(m, x)
        res[k] = {
            "fwd_ms": 1e3 * statistics.median(t_f[k]), "fwdbwd_ms": 1e3 * statistics.median(t_fb[k]),
            "fwd_ratio": statistics.median(a / b for a, b in zip(t_f[k], t_f[base])),
            "fwdbwd_ratio": statistics.median(a / b for a, b in zip(t_fb[k], t_fb[base])),
            "saved_bytes": sb, "saved_ratio": sb / base_saved,
            "fwd_GBps": nbytes / statistics.median(t_f[k]) / 1e9,
        }
    # s(u) alone per op, as a ratio to the base norm's forward+backward timed in the same round
    res["_transcendental"] = {k: {"ms": 1e3 * statistics.median(t),
                                  "ratio": statistics.median(a / b for a, b in zip(t, t_fb[base]))}
                              for k, t in t_floor.items()}
    res["_copy"] = {"GBps": nbytes / statistics.median(t_copy) / 1e9, "ms": 1e3 * statistics.median(t_copy)}
    return res


def training_step(model: str, norm: str, batch_size: Optional[int] = None, **batch: Any) -> Callable[[], None]:
    """One training step (forward, backward, AdamW) of a preset model with ``norm``, on a fixed synthetic batch of
    ``batch_size`` (default: the task's) shaped by ``batch`` (``context``, ``vocab_size``, ``channels``,
    ``image_size``; ``context`` also sizes an LM)."""
    from .models import build_model
    from .train import TASK_DEFAULTS
    torch.manual_seed(0)
    m, _ = build_model(model, norm, **({"context": batch["context"]} if "context" in batch else {}))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    kind = task_kind(model)
    kw = kind.synthetic_batch(batch_size or TASK_DEFAULTS[kind.name]["batch_size"], **batch)

    def step():
        loss = m(**kw).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: kernel build, allocator, optimizer state
    return step


STEP_NORMS = ("base", *(f"ib_{op}:strength={lam}" for op, lam in OPS), "dyt", "normalnorm")


def run(rounds: int, quick: bool, row_shapes: tuple[tuple[int, int], ...] = ROW_SHAPES,
        nchw: tuple[int, int, int, int] = NCHW,
        models: tuple[str, ...] = ("gpt2-mini", "llama-mini", "vit-mini", "resnet-mini")) -> dict:
    torch.manual_seed(0)
    results = {"rows": {}, "nchw": {}, "train_step": {}}
    shapes = row_shapes[:1] if quick else row_shapes
    for dtype in (torch.float32, torch.bfloat16):
        for shape in shapes:
            x = torch.randn(shape).to(dtype)
            key = f"{shape[0]}x{shape[1]} {str(dtype).replace('torch.', '')}"
            results["rows"][key] = measure(_candidates_rows(shape[1], dtype), x, "nn.LayerNorm", rounds)
            print(f"bench: {key} done", file=sys.stderr)
    for dtype in (torch.float32, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(nchw).to(dtype).contiguous(memory_format=layout)
            key = "x".join(map(str, nchw)) + f" {str(dtype).replace('torch.', '')}" + (
                " channels_last" if layout == torch.channels_last else "")
            results["nchw"][key] = measure(_candidates_nchw(nchw[1], dtype), x, "nn.BatchNorm2d", rounds)
            print(f"bench: {key} done", file=sys.stderr)
            if quick:
                break
    for model in models:
        steps = {n: training_step(model, n) for n in STEP_NORMS}
        times = {n: [] for n in STEP_NORMS}
        for _ in range(3 * rounds):  # one step of each norm per round, so drift hits all alike
            for n, step in steps.items():
                times[n].append(_time(step))
        results["train_step"][model] = {
            n: {"ms": 1e3 * statistics.median(t),
                "ratio": statistics.median(a / b for a, b in zip(t, times["base"]))} for n, t in times.items()}
        print(f"bench: {model} training step done", file=sys.stderr)
    return results


def to_markdown(res: dict, command: str) -> str:
    lines = ["# Norm benchmarks (CPU)", "", f"Regenerate: `{command}`", "",
             f"torch {res['environment']['torch']}, {res['environment']['threads']} threads, "
             f"{res['environment']['cpu']} ({res['environment']['cpu_capability']}); allocator: {res['environment']['malloc']}. Ratios are to the PyTorch base "
             "norm timed in the same round (median over rounds); lower is better.", "",
             "## The norm alone: forward+backward, ratio to the PyTorch norm", "",
             "`identity` is the same kernel with the `none` op: every memory pass and no transcendental, the floor.", "",
             "| case | base | power | log | tanh | identity | DyT | NormalNorm | saved (tanh) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for section, base in (("rows", "nn.LayerNorm"), ("nchw", "nn.BatchNorm2d")):
        for key, r in res[section].items():
            cells = [f"{r[name]['fwdbwd_ratio']:.2f}x" for name in
                     [f"IB-{op} fast" for op, _ in OPS] + ["IB-none fast", "DyT", "NormalNorm"]]
            lines.append(f"| {key} | {base} | " + " | ".join(cells) + f" | {r['IB-tanh fast']['saved_ratio']:.2f}x |")
    lines.append("")
    ops = [op for op, _ in OPS]
    lines += ["## The floor, where a target is missed", "",
              "`s(u)` is the C++ kernel's transcendental alone: one forward evaluation and one backward evaluation (s and "
              "s') over the case's element count, in float32, nothing stored (`op_cost`). The floor adds it to the "
              "identity-op kernel: every memory pass plus the math no fusion removes. All ratios are to the base "
              "norm's forward+backward in the same round.", "",
              "| case | identity | " + " | ".join(f"s(u) {op}" for op in ops) + " | "
              + " | ".join(f"floor {op} | kernel {op}" for op in ops) + " |",
              "|---|---|" + "---|" * (3 * len(ops))]
    for section in ("rows", "nchw"):
        for key, r in res[section].items():
            tr = r.get("_transcendental", {})
            if not tr:
                continue
            ident = r["IB-none fast"]["fwdbwd_ratio"]
            cells = [f"{ident:.2f}x"] + [f"{tr[op]['ratio']:.2f}x" for op in ops]
            cells += [f"{ident + tr[op]['ratio']:.2f}x | {r[f'IB-{op} fast']['fwdbwd_ratio']:.2f}x" for op in ops]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    for section, base in (("rows", "nn.LayerNorm"), ("nchw", "nn.BatchNorm2d")):
        for key, r in res[section].items():
            lines += [f"## {key} (base: {base}; copy of the same bytes: {r['_copy']['GBps']:.1f} GB/s)", "",
                      "| layer | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio | saved MB | saved ratio | fwd GB/s |",
                      "|---|---|---|---|---|---|---|---|"]
            for name, v in r.items():
                if name.startswith("_"):
                    continue
                lines.append(f"| {name} | {v['fwd_ms']:.1f} | {v['fwd_ratio']:.2f} | {v['fwdbwd_ms']:.1f} | "
                             f"{v['fwdbwd_ratio']:.2f} | {v['saved_bytes'] / 2**20:.1f} | {v['saved_ratio']:.2f} | "
                             f"{v['fwd_GBps']:.1f} |")
            lines.append("")
    steps = res["train_step"]
    if steps:
        heads = [n.split(":")[0].replace("ib_", "") for n in STEP_NORMS[1:]]
        lines += ["## Training step, ratio to the same model with its base norm", "",
                  "Forward, backward and AdamW of the preset model; the median over rounds of the ratio to the base-norm "
                  "step timed in the same round.", "",
                  "| model | base ms/step | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for model, r in steps.items():
            lines.append(f"| {model} | {r['base']['ms']:.0f} | "
                         + " | ".join(f"{r[n]['ratio']:.2f}x" for n in STEP_NORMS[1:]) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def cmd_bench(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.rounds, args.quick)
    res["environment"] = provenance()
    command = " ".join(f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ)
    command = (command + " " if command else "") + command_line()
    res["command"] = command
    out = Path(args.out)
    atomic_write_json(out / "norms_cpu.json", res)
    md = to_markdown(res, command)
    atomic_write_text(out / "norms_cpu.md", md)
    print(md)
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time and memory of IBNorm vs PyTorch norms and peers (ratios)")
    p.add_argument("--rounds", type=int, default=7, help="timing rounds, interleaved over candidates (default: 7)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: 0, torch's default)")
    p.add_argument("--quick", action="store_true", help="one row shape and one batch layout only")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default: benchmarks/results)")
    p.set_defaults(fn=cmd_bench)
