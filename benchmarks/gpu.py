"""IBNorm on a CUDA GPU: the Triton kernels and Inductor's fusion of the reference against nn.LayerNorm and nn.RMSNorm,
a training step of each preset, and the choice ``impl="auto"`` makes under ``torch.compile``.

    PYTHONPATH=. python3 benchmarks/gpu.py --out OUT [--choice ibnorm/kernels/cuda_choice.json]

Writes ``OUT/norms_cuda.md`` and ``OUT/norms_cuda.json``; with ``--choice``, the measured choice table that
``ibnorm.kernels.cuda_choice`` reads. Every ratio is to the PyTorch norm of the same grouping timed in the same round
(rounds interleave every candidate; medians over rounds). ``--device cpu --smoke`` runs the same code on the CPU, with
the C++ kernel where Triton would run, on tiny shapes: that is how the script is tested without a GPU.

Candidates per grouping (layer: nn.LayerNorm, RMS: nn.RMSNorm), op and dtype:
- ``triton``: the layer with ``impl="triton"``, eager;
- ``triton compiled``: the same under ``torch.compile`` (the Triton custom op is opaque to Inductor);
- ``reference compiled``: ``impl="reference"`` under ``torch.compile``, which Inductor fuses itself.
``auto`` under ``torch.compile`` takes the faster of the two compiled ones (geometric mean over the row shapes).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch._dynamo
from torch import nn

import ibnorm
from ibnorm.atomic import atomic_write_json, atomic_write_text
from ibnorm.kernels import cuda_choice

ROW_SHAPES = ((8192, 768), (4096, 2048), (32768, 256))
SMOKE_SHAPES = ((64, 96),)
OPS = (("power", 0.7), ("log", 0.7), ("tanh", 0.7))  # strengths off 0.5 and 1, as in `ibnorm bench`
GROUPINGS = {"layer": ("nn.LayerNorm", ibnorm.IBLayerNorm), "rms": ("nn.RMSNorm", ibnorm.IBRMSNorm)}
MODELS = ("gpt2-mini", "llama-mini", "vit-mini", "resnet-mini")


def candidates(grouping: str, dim: int, dtype: torch.dtype, device: str, ops=OPS) -> dict[str, Callable]:
    base_name, cls = GROUPINGS[grouping]
    base = (nn.LayerNorm if grouping == "layer" else nn.RMSNorm)(dim, device=device, dtype=dtype)
    fast = "triton" if device == "cuda" else "cpu"  # the CPU stand-in, for testing the script
    c = {base_name: base}
    for op, lam in ops:
        kernel = cls(dim, compression=op, strength=lam, impl=fast, device=device, dtype=dtype)
        ref = cls(dim, compression=op, strength=lam, impl="reference", device=device, dtype=dtype)
        c[f"{op} triton"] = kernel
        c[f"{op} triton compiled"] = torch.compile(kernel, fullgraph=True)
        c[f"{op} reference compiled"] = torch.compile(ref, fullgraph=True)
    return c


def measure(cands: dict[str, Callable], x: torch.Tensor, base: str, rounds: int) -> dict:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    gy, xg = torch.randn_like(x), x.detach().requires_grad_(True)

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwdbwd(m):
        m(xg).backward(gy)
        xg.grad = None

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    for m in cands.values():  # warm-up: compiles, autotuning, allocator
        for _ in range(2):
            fwd(m)
            fwdbwd(m)
    t = {k: ([], []) for k in cands}
    for _ in range(rounds):
        for k, m in cands.items():
            t[k][0].append(timed(lambda: fwd(m)))
            t[k][1].append(timed(lambda: fwdbwd(m)))
    res = {}
    for k in cands:
        f, fb = t[k]
        res[k] = {"fwd_ms": 1e3 * statistics.median(f), "fwdbwd_ms": 1e3 * statistics.median(fb),
                  "fwd_ratio": statistics.median(a / b for a, b in zip(f, t[base][0])),
                  "fwdbwd_ratio": statistics.median(a / b for a, b in zip(fb, t[base][1]))}
    return res


def training_steps(model: str, device: str, rounds: int, ops=OPS) -> dict:
    """Forward, backward and AdamW of a preset, eager, ``impl="auto"``: ms and the ratio to the base norm."""
    from ibnorm.lab.models import build_model
    from ibnorm.lab.tasks import task_kind
    from ibnorm.lab.train import TASK_DEFAULTS
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kind = task_kind(model)
    batch = {k: v.to(device) for k, v in kind.synthetic_batch(TASK_DEFAULTS[kind.name]["batch_size"]).items()}
    steps = {}
    for norm in ("base", *(f"ib_{op}:strength={lam}" for op, lam in ops)):
        torch.manual_seed(0)
        m = build_model(model, norm)[0].to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

        def step(m=m, opt=opt):
            loss = m(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for _ in range(3):
            step()
        steps[norm] = step
    times = {n: [] for n in steps}
    for _ in range(3 * rounds):
        for n, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times[n].append(time.perf_counter() - t0)
    return {n: {"ms": 1e3 * statistics.median(t), "ratio": statistics.median(a / b for a, b in zip(t, times["base"]))}
            for n, t in times.items()}


def choices(rows: dict) -> dict[str, dict]:
    """Per grouping, op and dtype: the geometric mean over shapes of compiled Triton over compiled reference
    (forward+backward), and which ``auto`` takes under ``torch.compile``."""
    out = {}
    for key, r in rows.items():
        grouping, _shape, dtype = key.split(" ")
        for name in r:
            if name.endswith(" triton compiled"):
                op = name.split(" ")[0]
                ratio = r[name]["fwdbwd_ms"] / r[f"{op} reference compiled"]["fwdbwd_ms"]
                out.setdefault(cuda_choice.key(grouping, op, dtype), []).append(ratio)
    return {k: {"triton_over_inductor": math.exp(statistics.fmean(map(math.log, v))),
                "choice": "inductor" if statistics.fmean(map(math.log, v)) > 0 else "triton"} for k, v in out.items()}


def run(device: str, rounds: int, smoke: bool) -> dict:
    shapes, ops = (SMOKE_SHAPES, OPS[2:]) if smoke else (ROW_SHAPES, OPS)
    groupings, dtypes = (("layer",), (torch.float32,)) if smoke else (tuple(GROUPINGS), (torch.float32, torch.bfloat16))
    res = {"rows": {}, "train_step": {}}
    for grouping in groupings:
        for dtype in dtypes:
            for shape in shapes:
                torch.manual_seed(0)
                torch._dynamo.reset()  # each case compiles its own modules; Dynamo's per-code-object limit is 8
                x = torch.randn(shape, device=device).to(dtype)
                key = f"{grouping} {shape[0]}x{shape[1]} {str(dtype).replace('torch.', '')}"
                res["rows"][key] = measure(candidates(grouping, shape[1], dtype, device, ops), x,
                                           GROUPINGS[grouping][0], rounds)
                print(f"gpu bench: {key} done", file=sys.stderr, flush=True)
    for model in MODELS[:1] if smoke else MODELS:
        res["train_step"][model] = training_steps(model, device, rounds, ops)
        print(f"gpu bench: {model} training step done", file=sys.stderr, flush=True)
    res["choices"] = choices(res["rows"])
    res["environment"] = {"torch": torch.__version__, "device": device,
                          "name": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke test of the script)"}
    return res


def to_markdown(res: dict, command: str) -> str:
    env = res["environment"]
    lines = [f"# Norm benchmarks ({env['name']})", "", f"Regenerate: `{command}`", "",
             f"torch {env['torch']}. Ratios are to the PyTorch norm of the same grouping timed in the same round (median "
             "over rounds); lower is better. `compiled`: `torch.compile(fullgraph=True)` of the layer.", ""]
    for key, r in res["rows"].items():
        lines += [f"## {key}", "", "| layer | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {v['fwd_ms']:.3f} | {v['fwd_ratio']:.2f}x | {v['fwdbwd_ms']:.3f} | {v['fwdbwd_ratio']:.2f}x |"
                  for n, v in r.items()]
        lines.append("")
    lines += ["## What `impl=\"auto\"` runs under `torch.compile`", "",
              "Compiled Triton over compiled reference, forward+backward, geometric mean over the row shapes: above 1, "
              "Inductor's fusion of the reference is faster and `auto` takes it.", "",
              "| grouping/op/dtype | Triton / Inductor | choice |", "|---|---|---|"]
    lines += [f"| {k} | {v['triton_over_inductor']:.2f} | {v['choice']} |" for k, v in res["choices"].items()]
    lines += ["", "## Training step (eager, `impl=\"auto\"`), ratio to the same model with its base norm", "",
              "| model | base ms | " + " | ".join(n.split(":")[0] for n in next(iter(res["train_step"].values()))
                                              if n != "base") + " |"]
    lines.append("|---|---|" + "---|" * (len(next(iter(res["train_step"].values()))) - 1))
    for model, r in res["train_step"].items():
        lines.append(f"| {model} | {r['base']['ms']:.1f} | "
                     + " | ".join(f"{v['ratio']:.2f}x" for n, v in r.items() if n != "base") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for norms_cuda.md and norms_cuda.json")
    p.add_argument("--choice", help="also write the choice table here (ibnorm/kernels/cuda_choice.json)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: test the script (default: cuda)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default: 10)")
    p.add_argument("--smoke", action="store_true", help="layer grouping, float32, one tiny shape, one op, one model")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu bench: --device cuda needs a CUDA GPU; use --device cpu --smoke to test the script", file=sys.stderr)
        return 2
    res = run(args.device, args.rounds, args.smoke)
    command = "PYTHONPATH=. python3 benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    atomic_write_json(out / "norms_cuda.json", res)
    atomic_write_text(out / "norms_cuda.md", to_markdown(res, command))
    if args.choice:
        atomic_write_json(Path(args.choice), cuda_choice.table_from(res))
    print(to_markdown(res, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
