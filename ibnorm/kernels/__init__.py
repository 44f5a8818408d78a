"""The kernels behind :mod:`ibnorm.functional`. Each computes the definition (:mod:`ibnorm.reference`) with
a hand-derived backward that saves only the input and per-group statistics, as ``nn.LayerNorm`` does:

- :mod:`ibnorm.kernels.autograd`: one ``torch.autograd.Function`` for every grouping, in plain PyTorch ops
  (``impl="autograd"``); the backward's derivation is in ``docs/method.md``;
- :mod:`ibnorm.kernels.cpu`: a C++/OpenMP kernel for last-dimension groups (layer and RMS grouping), built
  on first use with ``torch.utils.cpp_extension`` (``impl="cpu"``);
- :mod:`ibnorm.kernels.triton_rows`: Triton kernels for the same groups on CUDA (``impl="triton"``),
  imported only when a CUDA tensor arrives.

The op formulas all come from :mod:`ibnorm.ops`; the compiled kernels take an op by its ``code``.
This package imports none of its modules: :mod:`ibnorm.functional` imports what it dispatches to.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor


def kernel_strength(lam_t: Optional[Tensor], lam: Optional[float]) -> float:
    """The strength as the compiled kernels take it: a number (1.0 stands in for the identity op's none)."""
    if lam_t is not None:
        return float(lam_t)
    return lam if lam is not None else 1.0
