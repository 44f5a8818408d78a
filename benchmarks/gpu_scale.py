"""The scale presets on a CUDA GPU: one bf16 ``torch.compile`` training step of every preset with the base norm and
with ``ib_tanh``, then ``--train-steps`` (200) steps of ``gpt2-124m`` through the trainer, base against ``ib_tanh``,
on random tokens, for throughput and MFU.

    PYTHONPATH=. python3 benchmarks/gpu_scale.py --out benchmarks/results [--budget-s 480]

Writes ``OUT/scale_cuda.json`` and ``OUT/scale_cuda.md`` after every measurement (atomically), so a run cut short
keeps what it measured. ``--budget-s`` bounds the whole script: what would start after it is recorded as skipped,
never half-measured. ``--device cpu --smoke`` runs the same code on the CPU at reduced size (bf16 autocast and
``torch.compile`` included): that is how the script is tested without a GPU (``tests/test_gpu_bench.py``).
``scripts/gpu_check.sh`` runs ``benchmarks/gpu.py`` and then this script, the GPU check of issue 26.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibnorm.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from ibnorm.lab.models import PRESETS, build_model  # noqa: E402

NORMS = ("base", "ib_tanh")
# Batches per compiled step: LMs at the presets' context, vision at 224 x 224 (smoke: tiny models and batches).
LM_BATCH, VISION_BATCH = 8, 64
SMOKE = {"lm": dict(width=32, depth=2, heads=4, context=16, vocab_size=64),
         "vision": {"vit-s16": dict(width=32, depth=2, heads=4, image_size=32, num_labels=5),
                    "resnet18": dict(width=8, num_labels=5), "resnet50": dict(width=8, num_labels=5)}}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compiled_step(name: str, norm: str, device: str, smoke: bool) -> dict:
    """Build, compile and take bf16-autocast AdamW steps: the first (compilation included) and the median of three
    more; on CUDA also the peak memory. The model, optimizer and compiled graphs are freed before it returns."""
    try:
        return _timed_steps(name, norm, device, smoke)
    finally:  # the model and optimizer died with _timed_steps' frame; drop the graphs and the cached blocks too
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()


def _timed_steps(name: str, norm: str, device: str, smoke: bool) -> dict:
    task = PRESETS[name].task
    over = dict(SMOKE["lm"] if task == "lm" else SMOKE["vision"][name]) if smoke else {}
    image_size = over.get("image_size", 64 if smoke else 224)
    torch.manual_seed(0)
    model, _ = build_model(name, norm, **over)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    if task == "lm":
        context = over.get("context", 1024)
        x = torch.randint(0, model.config.vocab_size, (2 if smoke else LM_BATCH, context), device=device)
        batch = {"input_ids": x, "labels": x}
    else:
        n = 2 if smoke else VISION_BATCH
        batch = {"pixel_values": torch.randn(n, 3, image_size, image_size, device=device),
                 "labels": torch.randint(0, model.config.num_labels, (n,), device=device)}
    forward = torch.compile(model)

    def step() -> float:
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} {norm}: loss {float(loss)}")
        return time.perf_counter() - t

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = step()
    times = sorted(step() for _ in range(3))
    out = {"first_step_s": first, "step_ms": 1e3 * times[1], "params": sum(p.numel() for p in model.parameters())}
    if device == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def trainer_runs(device: str, steps: int, smoke: bool, workdir: Path) -> dict:
    """``ibnorm train`` of gpt2-124m on a folder of random tokens, bf16 and compiled, base and ib_tanh: the
    trainer's own throughput and MFU (result.json)."""
    from ibnorm.lab.train import TrainConfig, train
    tokens = workdir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = 64 if smoke else 50257
    rng.integers(0, vocab, 2_000_000, dtype=np.uint16).tofile(tokens / "train.bin")
    rng.integers(0, vocab, 200_000, dtype=np.uint16).tofile(tokens / "val.bin")
    (tokens / "meta.json").write_text(f'{{"vocab_size": {vocab}, "tokenizer": "random"}}')
    size = dict(width=32, depth=2, heads=4, context=16, batch_size=4) if smoke else dict(context=1024, batch_size=16)
    out = {}
    for norm in NORMS:
        cfg = TrainConfig(model="gpt2-124m", norm=norm, data=str(tokens), steps=steps, eval_every=steps,
                          eval_batches=2, warmup_steps=min(20, steps), lr=6e-4, precision="bf16", compile=True,
                          device=device, progress=False, checkpoint_every=10 ** 9, **size)
        result = train(cfg, workdir / norm)
        out[norm] = {k: result.get(k) for k in ("tokens_per_s", "mfu", "session_wall_s", "n_params")}
        out[norm]["val_loss"] = result["final"]["val_loss"]
    return out


def to_markdown(res: dict, command: str) -> str:
    env = res["environment"]
    sizes = ("reduced models and batches (a smoke test of the script, not a measurement)" if env.get("smoke") else
             f"LMs at batch {LM_BATCH} x 1024 tokens, vision at batch {VISION_BATCH} x 224 x 224")
    lines = [f"# Scale presets on {env['name']}", "", f"Regenerate: `{command}`", "",
             f"torch {env['torch']}. bf16 autocast, `torch.compile(model)`, AdamW; {sizes}. Step: median of three after the first (compiling) "
             "one; ratio: ib_tanh over the base norm.", "",
             "| preset | params | base first step s | base ms/step | ib_tanh ms/step | ratio | base peak GB | ib_tanh peak GB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res["compiled_step"].items():
        if "skipped" in r or "error" in r:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} |||||||")
            continue
        b, t = r["base"], r["ib_tanh"]
        mem = lambda v: f"{v['peak_memory_gb']:.1f}" if "peak_memory_gb" in v else "-"  # noqa: E731
        lines.append(f"| {name} | {b['params'] / 1e6:.1f}M | {b['first_step_s']:.1f} | {b['step_ms']:.1f} | "
                     f"{t['step_ms']:.1f} | {t['step_ms'] / b['step_ms']:.2f}x | {mem(b)} | {mem(t)} |")
    tr = res.get("trainer")
    if tr and "skipped" not in tr and "error" not in tr:
        lines += ["", f"## gpt2-124m through `ibnorm train`, {res['train_steps']} steps, bf16, compiled, random tokens",
                  "", "| norm | tokens/s | MFU | val loss |", "|---|---|---|---|"]
        for norm, v in tr.items():
            mfu = f"{100 * v['mfu']:.1f}%" if v.get("mfu") is not None else "-"
            lines.append(f"| {norm} | {v['tokens_per_s']:,.0f} | {mfu} | {v['val_loss']:.3f} |")
    elif tr:
        lines += ["", f"gpt2-124m through `ibnorm train`: {tr.get('skipped') or tr.get('error')}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for scale_cuda.md and scale_cuda.json")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: test the script (default: cuda)")
    p.add_argument("--smoke", action="store_true", help="reduced models and batches, few steps")
    p.add_argument("--budget-s", type=float, default=480.0, help="start nothing new after this many seconds")
    p.add_argument("--train-steps", type=int, default=200, help="trainer steps per norm (default: 200)")
    p.add_argument("--presets", default=",".join(n for n, pr in PRESETS.items() if pr.scale))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu scale: --device cuda needs a CUDA GPU; use --device cpu --smoke to test the script", file=sys.stderr)
        return 2
    names = [n for n in args.presets.split(",") if n]  # "" = the trainer runs only
    unknown = [n for n in names if n not in PRESETS or not PRESETS[n].scale]
    if unknown:
        print(f"gpu scale: --presets must name scale presets; got {', '.join(unknown)}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget_s
    command = "PYTHONPATH=. python3 benchmarks/gpu_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke test of the script)"
    res = {"environment": {"torch": torch.__version__, "device": args.device, "name": name, "smoke": args.smoke},
           "train_steps": args.train_steps, "compiled_step": {}}

    def save() -> None:
        atomic_write_json(out / "scale_cuda.json", res)
        atomic_write_text(out / "scale_cuda.md", to_markdown(res, command))

    for preset in names:
        if time.monotonic() > deadline:
            res["compiled_step"][preset] = {"skipped": "out of the time budget"}
        else:
            try:
                res["compiled_step"][preset] = {norm: compiled_step(preset, norm, args.device, args.smoke)
                                                for norm in NORMS}
            except Exception as e:  # one preset failing (memory, a compile error) must not lose the others
                res["compiled_step"][preset] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        save()
        print(f"gpu scale: {preset} done", file=sys.stderr, flush=True)
    if time.monotonic() > deadline:
        res["trainer"] = {"skipped": "out of the time budget"}
    else:
        with tempfile.TemporaryDirectory() as d:
            try:
                res["trainer"] = trainer_runs(args.device, args.train_steps, args.smoke, Path(d))
            except Exception as e:
                res["trainer"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    save()
    print(to_markdown(res, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
