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
from typing import Optional

import torch
from torch import Tensor, nn

from ..convert import norm_kind
from ..layers import _IBMixin
from ..peers import PEERS
from .estimators import mutual_information

DEFAULT_MAX_DIM = 256


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
        self.model, self.kind, self.method, self.beta, self.max_dim = model, kind, method, beta, max_dim
        self.probe_x, self.probe_y = probe_x, probe_y
        self.kwargs = estimator_kwargs or {}
        if kind == "lm":
            onehot = nn.functional.one_hot(probe_x, vocab_size or int(probe_x.max()) + 1).double()
            self.x_rep = project(onehot, max_dim, "input")
        else:
            self.x_rep = project(probe_x, max_dim, "input")
        self.labels = probe_y.reshape(len(probe_y), -1)[:, -1].long().numpy()

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
                key = "input_ids" if self.kind == "lm" else "pixel_values"
                self.model(**{key: self.probe_x})
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        return captured

    def record(self, step: int) -> list[dict]:
        rows = []
        for index, (name, (module, inp, out)) in enumerate(self._capture().items()):
            if self.kind == "lm" and name == "penultimate":
                out = out[:, -1]  # the features that predict Y
            t = project(out, self.max_dim, name)
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
