"""Capture the representation after every normalization layer (and the model's penultimate features) on a
fixed probe set, and turn it into information-plane quantities.

Memory bound: the probe is ``n`` examples (default 512); a representation wider than ``max_dim``
(default 256) is multiplied by a fixed Gaussian random projection ``[D, max_dim] / sqrt(max_dim)``
(seeded by the layer's name), which keeps pairwise distances within a small factor
(Johnson-Lindenstrauss), so the kernel and kNN estimators see about the same geometry.

For vision models ``X`` is the image and ``Y`` the class. For language models ``X`` is the window of
tokens (one-hot, projected) and ``Y`` the token that follows the window's last position.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ...convert import norm_kind
from ...info import mutual_information
from ...layers import _IBMixin
from ...peers import PEERS
from ..records import read_csv, write_csv
from ..tasks import TASK_KINDS

DEFAULT_MAX_DIM = 256
# One row per layer and recorded step; model, norm and seed identify the run.
COLUMNS = ["model", "norm", "seed", "step", "index", "layer", "type", "I_XT", "I_TY", "IB", "beta", "method", "n",
           "dim", "contraction", "strength"]


def write_info_csv(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, COLUMNS)


def read_info_csv(path: Path) -> list[dict]:
    return read_csv(path, ints=("seed", "step", "index", "n", "dim"), floats=("I_XT", "I_TY", "IB", "beta"))


def is_norm_layer(module: nn.Module) -> bool:
    return isinstance(module, (_IBMixin,) + PEERS) or norm_kind(module) is not None


def _head(model: nn.Module) -> Optional[nn.Module]:
    for name in ("classifier", "lm_head", "head", "fc"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            return m[-1] if isinstance(m, nn.Sequential) else m
    return None


def project(t: Tensor, max_dim: int, name: str) -> Tensor:
    """``[n, D] -> [n, min(D, max_dim)]`` by a fixed random projection (identity when narrow enough)."""
    t = t.reshape(t.shape[0], -1).double()
    if t.shape[1] <= max_dim:
        return t
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    w = torch.randn(t.shape[1], max_dim, generator=g, dtype=torch.float64) / max_dim ** 0.5
    return t @ w


class InfoRecorder:
    """Records I(X;T), I(T;Y), the IB value and IBNorm diagnostics per norm layer on a probe set."""

    def __init__(self, model: nn.Module, probe_x: Tensor, probe_y: Tensor, kind: str = "vision", *,
                 method: str = "renyi", beta: float = 0.1, max_dim: int = DEFAULT_MAX_DIM, vocab_size: Optional[int] = None,
                 estimator_kwargs: Optional[dict] = None) -> None:
        if len(probe_x) != len(probe_y):
            raise ValueError(f"probe_x and probe_y must have the same length; got {len(probe_x)} and {len(probe_y)}")
        self.model, self.kind, self.method, self.beta, self.max_dim = model, TASK_KINDS[kind], method, beta, max_dim
        self.probe_x, self.probe_y = probe_x, probe_y
        self.kwargs = estimator_kwargs or {}
        self.x_rep = project(self.kind.probe_inputs(probe_x, vocab_size), max_dim, "input")
        self.labels = self.kind.probe_labels(probe_y).numpy()

    def _capture(self) -> dict[str, tuple[nn.Module, Tensor, Tensor]]:
        captured: dict[str, tuple[nn.Module, Tensor, Tensor]] = {}
        handles = []
        for name, module in self.model.named_modules():
            if is_norm_layer(module):
                handles.append(module.register_forward_hook(
                    lambda m, inp, out, name=name: captured.__setitem__(name, (m, inp[0].detach(), out.detach()))))
        head = _head(self.model)
        if head is not None:
            handles.append(head.register_forward_hook(
                lambda m, inp, out: captured.__setitem__("penultimate", (m, inp[0].detach(), inp[0].detach()))))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(**{self.kind.input_key: self.probe_x})
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        return captured

    def record(self, step: int) -> list[dict]:
        rows = []
        for index, (name, (module, inp, out)) in enumerate(self._capture().items()):
            t = project(self.kind.probe_features(out, name == "penultimate"), self.max_dim, name)
            i_xt = mutual_information(self.x_rep, t, self.method, **self.kwargs)
            i_ty = mutual_information(t, self.labels, self.method, **self.kwargs)
            row = {"step": step, "index": index, "layer": name, "type": type(module).__name__ if name != "penultimate" else "penultimate",
                   "I_XT": i_xt, "I_TY": i_ty, "IB": i_ty - self.beta * i_xt, "beta": self.beta,
                   "method": self.method, "n": len(t), "dim": t.shape[1], "contraction": "", "strength": ""}
            if isinstance(module, _IBMixin) and module.init_strength is not None:
                row["contraction"] = module.contraction_ratio(inp)
                s = module.strength
                row["strength"] = float(s.detach()) if isinstance(s, Tensor) else s
            rows.append(row)
        return rows
