"""What ``impl="auto"`` runs for a CUDA input of layer or RMS grouping while ``torch.compile`` traces the model: the
Triton kernel (a custom op, opaque to Inductor) or the reference, which Inductor then fuses with its neighbours.

The choice is measured, never guessed: ``benchmarks/gpu.py --choice ibnorm/kernels/cuda_choice.json`` times both under
``torch.compile`` on a GPU and writes the faster per grouping, op and dtype. Without that file, or for a key it lacks,
``auto`` keeps the Triton kernel. Eager CUDA runs always take Triton (the reference is not fused there).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

CHOICE_PATH = Path(__file__).with_name("cuda_choice.json")
CHOICES = ("triton", "inductor")


def key(grouping: str, op: str, dtype: str | torch.dtype) -> str:
    """``"layer/tanh/bfloat16"``: grouping (layer or rms), op and dtype name."""
    return f"{grouping}/{op}/{str(dtype).replace('torch.', '')}"


def load(path: Path = CHOICE_PATH) -> dict[str, str]:
    """The measured choices, by :func:`key`; empty when none were measured."""
    if not path.exists():
        return {}
    table = json.loads(path.read_text())["choices"]
    bad = {k: v for k, v in table.items() if v not in CHOICES}
    if bad:
        raise ValueError(f"{path}: every choice must be one of {CHOICES}; got {bad}")
    return table


def table_from(bench: dict) -> dict:
    """The file :func:`load` reads, from ``benchmarks/gpu.py``'s results."""
    return {"environment": bench["environment"],
            "choices": {k: v["choice"] for k, v in bench["choices"].items()},
            "triton_over_inductor": {k: v["triton_over_inductor"] for k, v in bench["choices"].items()}}


_choices = load()  # read once at import, so that tracing sees a plain dict


def compiled_reference_is_faster(x: Tensor, grouping: str, op: str) -> bool:
    """True when ``x`` is on CUDA, ``torch.compile`` is tracing, and the measured table says Inductor's fusion of the
    reference beats the Triton kernel for this grouping, op and dtype."""
    return (x.is_cuda and bool(_choices) and torch.compiler.is_compiling()
            and _choices.get(key(grouping, op, x.dtype)) == "inductor")
