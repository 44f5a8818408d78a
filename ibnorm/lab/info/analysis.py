"""Information quantities of a trained vision model, per norm layer, from estimators validated where they are used.

- ``I(X;T)``: KSG with the Gaussian-copula bias correction between the top 4 principal components of the image
  and of the layer's output, on 2,000 test images. ``results/info/estimator_validation.md`` validates exactly
  this estimator at 4 + 4 dimensions and n = 2000 (bias about 0.01 nats up to 3.3 nats), and
  ``results/info/estimator_validation_high_mi.md`` up to 7.8 nats (bias at most 0.07 nats; plain KSG is 1-4
  nats low there). By data processing it is a lower bound
  on the information the full representation carries; it compares norms at a fixed, validated resolution.
- ``I(T;Y)``: the linear-probe lower bound ``H(Y) - CE``, where CE is the held-out cross-entropy (5,000 test
  images) of a logistic regression fit on the layer's output for 5,000 training images (a fixed random
  projection to 256 dimensions first). Any probe's held-out CE bounds ``H(Y|T)`` from above, so this never
  overstates ``I(T;Y)``, and it does not saturate at ``H(Y)`` the way the label-kernel Renyi estimate does.
- The IB value ``I(T;Y) - beta I(X;T)`` with ``beta = 0.1``, and, for IBNorm layers, the variance contraction
  ``var(s(u)) / var(u)``.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor, nn

from ...info import mutual_information
from ...layers import _IBMixin
from .recorder import _head, is_norm_layer

BETA = 0.1
PCA_DIM = 4  # the dimension the KSG validation covers
MI_EXAMPLES = 2000
PROBE_TRAIN, PROBE_TEST = 5000, 5000
PROJECT_DIM = 256


def _projection(dim: int, name: str) -> Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(dim, PROJECT_DIM, generator=g) / PROJECT_DIM ** 0.5


@torch.no_grad()
def capture(model: nn.Module, x: Tensor, input_key: str, batch: int = 500) -> dict[str, dict]:
    """Each norm layer's output (and the head's input, ``penultimate``), flattened and randomly projected to at
    most 256 dimensions, plus each IBNorm layer's mean variance contraction over the batches."""
    out: dict[str, dict] = {}
    projections: dict[str, Tensor] = {}

    def keep(name: str, module: nn.Module, inp: Tensor, t: Tensor) -> None:
        flat = t.reshape(len(t), -1).float()
        if flat.shape[1] > PROJECT_DIM:
            if name not in projections:
                projections[name] = _projection(flat.shape[1], name)
            flat = flat @ projections[name]
        entry = out.setdefault(name, {"type": type(module).__name__, "t": [], "contraction": []})
        entry["t"].append(flat)
        if isinstance(module, _IBMixin) and module.init_strength is not None:
            entry["contraction"].append(module.contraction_ratio(inp))

    handles = [m.register_forward_hook(lambda m, i, o, name=name: keep(name, m, i[0], o))
               for name, m in model.named_modules() if is_norm_layer(m)]
    head = _head(model)
    if head is not None:
        handles.append(head.register_forward_hook(lambda m, i, o: keep("penultimate", m, i[0], i[0])))
    model.eval()
    try:
        for start in range(0, len(x), batch):
            model(**{input_key: x[start:start + batch]})
    finally:
        for h in handles:
            h.remove()
    for entry in out.values():
        entry["t"] = torch.cat(entry["t"])
        entry["contraction"] = float(np.mean(entry["contraction"])) if entry["contraction"] else None
    return out


def pca(a: Tensor, dim: int = PCA_DIM) -> np.ndarray:
    a = a.double() - a.double().mean(0)
    _, _, v = torch.linalg.svd(a, full_matrices=False)
    return (a @ v[:dim].T).numpy()


def probe_bound(train_t: Tensor, train_y: Tensor, test_t: Tensor, test_y: Tensor, steps: int = 200) -> tuple[float, float]:
    """(H(Y) - held-out CE of a logistic-regression probe, held-out CE), in nats."""
    mean, std = train_t.mean(0), train_t.std(0) + 1e-6
    a, b = ((train_t - mean) / std).double(), ((test_t - mean) / std).double()
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(a @ w + bias, train_y) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(b @ w + bias, test_y))
    p = torch.bincount(test_y, minlength=classes).double() / len(test_y)
    h_y = float(-(p[p > 0] * p[p > 0].log()).sum())
    return max(h_y - ce, 0.0), ce


def analyse_model(model: nn.Module, train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                  input_key: str = "pixel_values") -> list[dict]:
    """One row per norm layer (in model order) and one for the penultimate features."""
    tr = capture(model, train_x[:PROBE_TRAIN], input_key)
    te = capture(model, test_x[:PROBE_TEST], input_key)
    x_mi = test_x[:MI_EXAMPLES]
    x_low = pca(x_mi.reshape(len(x_mi), -1))
    rows = []
    for index, (name, entry) in enumerate(te.items()):
        t_test = entry["t"]
        i_xt = mutual_information(x_low, pca(t_test[:MI_EXAMPLES]), "ksg", bias_correction="gaussian")
        i_ty, ce = probe_bound(tr[name]["t"], train_y[:PROBE_TRAIN], t_test, test_y[:PROBE_TEST])
        rows.append({"index": index, "layer": name, "type": entry["type"] if name != "penultimate" else "penultimate",
                     "I_XT": i_xt, "I_TY_probe": i_ty, "probe_ce": ce, "IB": i_ty - BETA * i_xt, "beta": BETA,
                     "contraction": entry["contraction"], "dim": int(t_test.shape[1])})
    return rows

