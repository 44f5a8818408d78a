"""The training step of every scale preset with IBNorm (tanh, log, power at strength 0.5) against its base norm, and
the data path's speed against that step, on CPU at reduced batch.

    MALLOC_MMAP_MAX_=0 PYTHONPATH=. python benchmarks/scale_cpu.py [--out benchmarks/results] [--rounds 3]

Each op is timed against a base-norm copy of the same model in the same rounds, alternating, so that drift on a
shared machine hits both alike (two models alive at a time: the 350M presets need about 12 GB). Steps: forward,
backward and AdamW, LMs at batch 1 x context 256, vision at batch 2 x 224 x 224. The data path: batches of the same
size from a memory-mapped token folder, and decoded, augmented images from an image folder (the trainer's own code).
Writes ``OUT/scale_cpu.json`` and ``OUT/scale_cpu.md`` atomically.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibnorm.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from ibnorm.lab.bench import training_step  # noqa: E402
from ibnorm.lab.models import PRESETS  # noqa: E402
from ibnorm.lab.records import provenance  # noqa: E402

OPS = ("ib_tanh", "ib_log", "ib_power")
# Issue #26's bars: a step at most this many times the base norm's, and loading this many times faster than a step.
STEP_BAR = {"resnet18": 1.25, "resnet50": 1.25}
STEP_BAR_DEFAULT = 1.10
DATA_BAR = 20.0
LM_BATCH, CONTEXT, VISION_BATCH = 1, 256, 2


def _step_fn(name: str, norm: str):
    if PRESETS[name].task == "lm":
        return training_step(name, norm, LM_BATCH, context=CONTEXT, vocab_size=50257)
    return training_step(name, norm, VISION_BATCH, channels=3, image_size=224)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def data_rates(rounds: int) -> dict:
    """Tokens/s of token-folder batches and images/s of image-folder batches, with the trainer's data code."""
    from PIL import Image
    from ibnorm.lab.data import lm_batch
    from ibnorm.lab.data.images import ImageFolderData
    from ibnorm.lab.data.tokens import token_folder
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "tok").mkdir()
        np.random.default_rng(0).integers(0, 50257, 4_000_000, dtype=np.uint16).tofile(d / "tok" / "train.bin")
        np.arange(10_000, dtype=np.uint16).tofile(d / "tok" / "val.bin")
        text = token_folder(d / "tok")
        g = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        n = 200
        for _ in range(n):
            lm_batch(text.train, LM_BATCH, CONTEXT, g)
        tokens = n * LM_BATCH * CONTEXT / (time.perf_counter() - t)
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            for c in ("a", "b"):
                (d / "img" / split / c).mkdir(parents=True)
                for i in range(16):
                    Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)).save(
                        d / "img" / split / c / f"{i}.jpg")
        images = ImageFolderData(d / "img", 224)
        t = time.perf_counter()
        for s in range(rounds * 4):
            images.train_x.augmented(torch.arange(8), s)
        image_rate = rounds * 4 * 8 / (time.perf_counter() - t)
    return {"tokens_per_s": tokens, "images_per_s": image_rate}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--presets", default=",".join(n for n, pr in PRESETS.items() if pr.scale))
    args = p.parse_args(argv)
    # Other work on the machine skews ratios (both arms alike only on average): record how busy it was.
    res = {"rounds": args.rounds, "load_average_at_start": os.getloadavg()[0], "steps": {}}
    for name in args.presets.split(","):
        base = _step_fn(name, "base")
        row = {}
        for op in OPS:
            mine = _step_fn(name, f"{op}:strength=0.5")
            tb, to = [], []
            for _ in range(args.rounds):
                tb.append(_time(base))
                to.append(_time(mine))
            row[op] = {"ms": 1e3 * statistics.median(to), "base_ms": 1e3 * statistics.median(tb),
                       "ratio": statistics.median(a / b for a, b in zip(to, tb))}
            del mine
        res["steps"][name] = row
        print(f"scale_cpu: {name} done", file=sys.stderr, flush=True)
        del base
    res["data"] = data_rates(args.rounds)
    # Headroom: loading rate over what the slowest-ratio step of each task consumes (batch / base step time).
    for task, key, per_step in (("lm", "tokens_per_s", LM_BATCH * CONTEXT), ("vision", "images_per_s", VISION_BATCH)):
        fastest = min((r["ib_tanh"]["base_ms"] for n, r in res["steps"].items() if PRESETS[n].task == task), default=None)
        if fastest:
            res["data"][f"{task}_headroom"] = res["data"][key] / (per_step / (fastest / 1e3))
    res["environment"] = provenance()  # after the runs, so that it names the kernel they loaded
    out = Path(args.out)
    atomic_write_json(out / "scale_cpu.json", res)
    env = res["environment"]
    lines = ["# Scale presets: the training step with IBNorm against the base norm (CPU, reduced batch)", "",
             "Regenerate: `MALLOC_MMAP_MAX_=0 PYTHONPATH=. python benchmarks/scale_cpu.py`", "",
             f"torch {env['torch']}, {env['threads']} threads, {env['cpu_model']} ({env['cpu_capability']}), allocator "
             f"{env['malloc']}. LMs at batch {LM_BATCH} x {CONTEXT} tokens, vision at batch {VISION_BATCH} x 224 x 224; "
             "forward, backward, AdamW; median over rounds of the ratio to a base-norm copy timed alternately.", "",
             f"Kernel: {env['kernel']}. Load average at the start: {res['load_average_at_start']:.2f} "
             f"({env['cpus']} CPUs).", "",
             "| preset | base ms/step | tanh | log | power | bar | within |", "|---|---|---|---|---|---|---|"]
    for name, row in res["steps"].items():
        bar = STEP_BAR.get(name, STEP_BAR_DEFAULT)
        ok = all(row[op]["ratio"] <= bar for op in OPS)
        lines.append(f"| {name} | {row['ib_tanh']['base_ms']:.0f} | "
                     + " | ".join(f"{row[op]['ratio']:.2f}x" for op in OPS) + f" | {bar:.2f}x | {'yes' if ok else 'NO'} |")
    d = res["data"]
    lines += ["", f"Data path: {d['tokens_per_s']:,.0f} tokens/s from a memory-mapped token folder, "
              f"{d['images_per_s']:,.0f} images/s decoded and augmented from an image folder (JPEG 400x300 -> 224), "
              "one process."]
    for task, unit in (("lm", "tokens"), ("vision", "images")):
        if f"{task}_headroom" in d:
            h = d[f"{task}_headroom"]
            lines.append(f"Loading {unit} is {h:,.0f}x faster than the fastest {task} preset's base step consumes them "
                         f"(bar {DATA_BAR:.0f}x: {'yes' if h >= DATA_BAR else 'NO'}).")
    atomic_write_text(out / "scale_cpu.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
