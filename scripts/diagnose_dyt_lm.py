"""Why DyT's LMs stop at the byte-frequency loss: what reaches the final norm, step by step.

    python scripts/diagnose_dyt_lm.py [--steps 500] [--out results/reproduction/dyt_lm_diagnosis]

Trains gpt2-mini and llama-mini as the reproduction's tuning runs do (seed 100, its data, AdamW and schedule, one
thread, at lr 0.003, the middle of both LM grids) with: the base norm; DyT everywhere (the reproduction's `dyt`);
DyT in the blocks with the base norm kept as the final norm before the LM head; and DyT with its authors' recipe for
LLMs (their LLaMA code, other_tasks/LLaMA/fms_fsdp/models/llama.py in github.com/jiachenzhu/DyT: a learnable scalar
multiplying the token embeddings, initialized to sqrt(width), and alpha_0 0.8 before attention and 0.2 before the MLP
and at the final norm, their LLaMA2-7B values). Every 25 steps it records the
input of the final norm, split into the part shared by every position (the mean over positions, per feature) and
the part that varies with the input, as root-mean-squares, and for DyT the fraction of the final norm's tanh
outputs within 0.01 of ±1 (saturated: no gradient passes and the output no longer depends on the input's size).
It also records each LM's byte-frequency level: the cross-entropy, on the tuning runs' and on the main runs' validation
windows, of the training bytes' frequencies, which is the loss of a model that has learned nothing that depends on its
input. Writes ``OUT.json`` (every record) and ``OUT.md`` (a summary table), each atomically.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ibnorm.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from ibnorm.lab.results.tuning import dyt_recipe_words  # noqa: E402

VARIANTS = ("base", "dyt", "dyt, final norm kept", "dyt, authors' LLM recipe")
RECIPE_ALPHA = {"attention": 0.8, "mlp": 0.2, "final": 0.2}  # DyT's LLaMA2-7B alpha_0 per norm position
# what the JSON records, so that the report quotes the recipe that ran rather than a copy of it
RECIPE = {"alpha_0": RECIPE_ALPHA, "embedding_scale": "√width"}
LR, SEED, EVERY = 0.003, 100, 25


def final_norm_path(model_name: str) -> str:
    return {"gpt2-mini": "transformer.ln_f", "llama-mini": "model.norm"}[model_name]


def norm_position(model_name: str, path: str) -> str:
    """Where a norm of the LM presets sits: before attention, before the MLP, or the final norm."""
    if path == final_norm_path(model_name):
        return "final"
    leaf = path.rsplit(".", 1)[-1]
    return {"ln_1": "attention", "input_layernorm": "attention", "ln_2": "mlp", "post_attention_layernorm": "mlp"}[leaf]


def apply_authors_recipe(model: nn.Module, model_name: str) -> None:
    """DyT's LLM recipe on a model whose norms are DyT: alpha_0 per position, and a learnable embedding scale."""
    from ibnorm.peers import DynamicTanh
    for path, module in model.named_modules():
        if isinstance(module, DynamicTanh):
            module.alpha_init = RECIPE_ALPHA[norm_position(model_name, path)]
            module.reset_parameters()
    embed = model.get_input_embeddings()
    embed.register_parameter("dyt_scale", nn.Parameter(torch.full((1,), float(embed.weight.shape[1]) ** 0.5)))
    embed.register_forward_hook(lambda module, args, output: output * module.dyt_scale)


def byte_frequency_level(model_name: str) -> dict:
    """The cross-entropy of the training bytes' frequencies on the tuning runs' and the main runs' validation
    windows, in nats/byte."""
    from ibnorm.lab import reproduce as R
    from ibnorm.lab.train import Task, TrainConfig
    family, out = R.FAMILIES[model_name], {}
    for stage, settings in (("tune", {**family.settings, **family.tune_settings}), ("main", family.settings)):
        task = Task(TrainConfig(model=model_name, **settings).resolved())
        # add-one: a byte of the validation text that training never shows gets a finite loss
        freq = torch.bincount(torch.as_tensor(task.text.train).long(), minlength=task.vocab_size).double() + 1
        ys = torch.cat([y for _, y in task.val]).flatten()
        out[stage] = round(-(freq / freq.sum()).log()[ys].mean().item(), 4)
    return out


def run(model_name: str, variant: str, steps: int) -> list[dict]:
    """Train one variant; return a record every EVERY steps (and at the last step)."""
    from ibnorm.lab.models import build_model
    from ibnorm.lab.train import Task, TrainConfig, lr_at, model_overrides, param_groups
    cfg = TrainConfig(model=model_name, norm="base" if variant == "base" else "dyt", seed=SEED, steps=steps,
                      lr=LR, progress=False).resolved()
    torch.manual_seed(cfg.seed)
    task = Task(cfg)
    model, _ = build_model(cfg.model, cfg.norm, **model_overrides(cfg, task))
    path = final_norm_path(model_name)
    if variant == "dyt, final norm kept":  # the preset's own final norm, freshly initialized, in DyT's place
        base, _ = build_model(cfg.model, "base", **model_overrides(cfg, task))
        parent, leaf = path.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, base.get_submodule(path))
    if variant == "dyt, authors' LLM recipe":  # the same weights as the dyt variant: only the recipe differs
        apply_authors_recipe(model, model_name)
    final = model.get_submodule(path)
    seen: dict = {}

    def look(module: nn.Module, args: tuple, output) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1])
        shared = x.mean(0)
        seen["shared_rms"] = shared.pow(2).mean().sqrt().item()
        seen["varying_rms"] = (x - shared).pow(2).mean().sqrt().item()
        alpha = getattr(module, "alpha", None)
        seen["saturated"] = None if alpha is None else (torch.tanh(alpha * x).abs() > 0.99).float().mean().item()
        seen["alpha"] = None if alpha is None else alpha.item()

    final.register_forward_hook(look)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, cfg.beta2))
    records, losses = [], []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = task.batch(step)
        loss, _ = task.loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % EVERY == 0 or step == steps - 1:
            recent = losses[-EVERY:]
            records.append({"step": step, "train_loss": sum(recent) / len(recent), **seen})
    return records


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def summary(results: dict, levels: dict, steps: int, argv: str, cpu_seconds: float) -> str:
    lines = ["# DyT on the LMs: what reaches the final norm", "",
             f"Regenerate: `{' '.join(['python scripts/diagnose_dyt_lm.py', argv]).rstrip()}` (this one took "
             f"{cpu_seconds / 60:.1f} CPU-minutes, measured, on {torch.backends.cpu.get_cpu_capability()}). "
             f"Seed {SEED}, lr {LR:g}, {steps} steps, the tuning runs' data and optimizer; one thread. "
             "Input of the final norm: root-mean-square of the part shared by every position (mean over positions) "
             "and of the part that varies; saturated: the final DyT's tanh outputs within 0.01 of ±1. "
             f"Training loss in nats/byte, mean of the {EVERY} steps up to the one shown. The byte-frequency level "
             "(the loss of predicting every byte by its frequency in the training text, on the validation windows): "
             + "; ".join(f"{m} {v['tune']:.4f} (tuning runs), {v['main']:.4f} (main runs)" for m, v in levels.items())
             + f". The authors' LLM recipe: {dyt_recipe_words(RECIPE)}.", "",
             "| model | variant | step | training loss | shared rms | varying rms | saturated | α |",
             "|---|---|---|---|---|---|---|---|"]
    for key, records in results.items():
        model_name, variant = key.split(" / ")
        shown = [r for r in records if r["step"] in (0, 25, 50, 100) or r is records[-1]]
        for r in shown:
            lines.append(f"| {model_name} | {variant} | {r['step']} | {r['train_loss']:.3f} | "
                         f"{fmt(r['shared_rms'], '.3g')} | {fmt(r['varying_rms'], '.3g')} | "
                         f"{fmt(r['saturated'], '.2f')} | {fmt(r['alpha'], '.3f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps per variant (default 500, the tuning budget)")
    parser.add_argument("--models", default="gpt2-mini,llama-mini", help="comma-separated LM presets")
    parser.add_argument("--out", default="results/reproduction/dyt_lm_diagnosis", help="output path without suffix")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer; got {args.steps}")
    models = args.models.split(",")
    for name in models:
        if name not in ("gpt2-mini", "llama-mini"):
            parser.error(f"--models accepts gpt2-mini and llama-mini; got {name!r}")
    torch.set_num_threads(1)
    started = time.process_time()
    results, levels = {}, {}
    for name in models:
        levels[name] = byte_frequency_level(name)
        for variant in VARIANTS:
            results[f"{name} / {variant}"] = run(name, variant, args.steps)
            print(f"{name} / {variant}: loss {results[f'{name} / {variant}'][-1]['train_loss']:.3f}", flush=True)
    given = " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    cpu_seconds = round(time.process_time() - started, 1)
    atomic_write_json(Path(args.out + ".json"), {"steps": args.steps, "lr": LR, "seed": SEED,
                                                 "cpu_time_s": cpu_seconds, "byte_frequency_level": levels,
                                                 "recipe": RECIPE, "runs": results})
    atomic_write_text(Path(args.out + ".md"), summary(results, levels, args.steps, given, cpu_seconds))


if __name__ == "__main__":
    main()
