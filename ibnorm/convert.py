"""``convert_norms``: swap a model's norm layers for IBNorm (or a peer) in place, keeping their state."""
from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .ops import ALIASES, COMPRESSIONS
from .layers import IB_CLASS_BY_GROUPING, IB_LAYERS, _IBMixin
from .peers import PEERS, DynamicErf, DynamicTanh
from .reference import default_eps
from .registry import IB_GROUPINGS, _REGISTRY, canonical_name

_BN_KIND = {nn.BatchNorm1d: "batch1d", nn.BatchNorm2d: "batch2d", nn.BatchNorm3d: "batch3d"}
_NORMALNORM = {"layer": "normalnorm_layer", "rms": "normalnorm_layer",
               "batch1d": "normalnorm_batch1d", "batch2d": "normalnorm_batch2d"}


@dataclass
class ConversionReport:
    """What ``convert_norms`` did: ``replaced`` (source class -> count), ``skipped`` (path -> reason)."""

    target: str
    replaced: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=dict)
    paths: list = field(default_factory=list)  # (module path, source class, new class)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def __str__(self) -> str:
        lines = [f"convert_norms(target={self.target!r}): replaced {self.total}"]
        lines += [f"  {cls}: {n}" for cls, n in sorted(self.replaced.items())]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines += [f"    {path}: {why}" for path, why in sorted(self.skipped.items())]
        return "\n".join(lines)


_EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")  # what Hugging Face's RMSNorm classes call their eps


def _rms_form(module: nn.Module) -> tuple[Optional[tuple[float, bool]], Optional[str]]:
    """Whether ``module`` is an RMSNorm that ibnorm can replace exactly, found by what it computes rather than by its
    name: ``((eps, unit_offset), None)`` when its output is ``x * rsqrt(mean(x^2) + eps)`` times ``weight`` (or
    ``1 + weight``, Gemma's form) on two probe inputs, else ``(None, why not)``. Hugging Face has a few hundred such
    classes (LlamaRMSNorm, GemmaRMSNorm, T5LayerNorm...), named and written in many ways."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    if any(True for _ in module.children()):
        return None, f"{name} holds other modules: not a norm layer itself (the norms inside it are converted)"
    eps = next((getattr(module, a) for a in _EPS_ATTRS if isinstance(getattr(module, a, None), (int, float))
                and not isinstance(getattr(module, a), bool)), None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1 or eps is None:
        return None, f"{name} has no 1-d weight and eps of a norm layer ibnorm recognises"
    if isinstance(getattr(module, "bias", None), torch.Tensor) or list(module.buffers(recurse=False)):
        return None, f"{name} has a bias or buffers besides its weight, which an RMSNorm replacement would lose"
    probe = copy.deepcopy(module).to_empty(device="cpu").float()  # meta-device models are probed too
    gen = torch.Generator().manual_seed(0)
    forms = set()
    with torch.no_grad():
        probe.weight.copy_(torch.rand(weight.shape, generator=gen) + 0.5)
        for scale in (1.0, 1e-3):  # the second probe is where eps shows
            x = torch.randn(2, 3, weight.shape[0], generator=gen) * scale
            try:
                y = probe(x)
            except Exception:
                return None, f"{name}'s forward takes more than its input (a gate, a condition or a mask)"
            base = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + float(eps))
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                return None, f"{name}'s output is not shaped like its input"
            match = [offset for offset, w in ((False, probe.weight), (True, 1 + probe.weight))
                     if torch.allclose(y, base * w, rtol=1e-4, atol=1e-6)]
            forms.add(match[0] if match else None)
    if len(forms) != 1 or None in forms:
        return None, (f"{name}'s output is not RMSNorm's of its input with its weight (or 1 + weight), so a "
                      "replacement would not be exact")
    return (float(eps), forms.pop()), None


def _skip_reason(module: nn.Module) -> Optional[str]:
    """Why a norm layer that ``norm_kind`` does not convert is left alone, or None for other modules."""
    if isinstance(module, (_IBMixin,) + PEERS):
        return f"already {type(module).__name__}: convert the original model, or build the layer you want directly"
    if isinstance(module, nn.modules.batchnorm._NormBase) and type(module) not in _BN_KIND:
        return f"{type(module).__name__} is not a plain BatchNorm1d/2d/3d (a subclass, SyncBatchNorm or instance norm)"
    for base in (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm):
        if isinstance(module, base) and type(module) is not base and type(module).forward is not base.forward:
            return f"{type(module).__name__} subclasses {base.__name__} with its own forward, which a replacement would lose"
    return None


def _is_norm_like(module: nn.Module) -> bool:
    """Named like a norm layer (``...Norm``, any case): one that is not converted is listed with its reason."""
    return type(module).__name__.lower().endswith("norm") and not isinstance(
        module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase))


def not_converted_reason(module: nn.Module) -> Optional[str]:
    """Why a module that ``norm_kind`` does not convert is left alone: for base norms ibnorm will not replace and
    for every module named like a norm; None for other modules."""
    reason = _skip_reason(module)
    if reason is None and _is_norm_like(module):
        reason = _rms_form(module)[1]
    return reason


def norm_kind(module: nn.Module) -> Optional[str]:
    """The grouping of a base norm layer (``layer``, ``rms``, ``batch1d/2d/3d``, ``group``) or None."""
    if _skip_reason(module) is not None:
        return None
    if isinstance(module, nn.LayerNorm):
        return "layer"
    if isinstance(module, nn.RMSNorm) or (_is_norm_like(module) and _rms_form(module)[0] is not None):
        return "rms"
    if type(module) in _BN_KIND:
        return _BN_KIND[type(module)]
    if isinstance(module, nn.GroupNorm):
        return "group"
    return None


def _source_config(module: nn.Module, kind: str) -> dict:
    """Constructor arguments shared by the base norm and its replacement."""
    if kind == "layer":
        return dict(normalized_shape=module.normalized_shape, eps=module.eps,
                    elementwise_affine=module.elementwise_affine, bias=module.bias is not None)
    if kind == "rms":
        if isinstance(module, nn.RMSNorm):
            return dict(normalized_shape=module.normalized_shape, eps=module.eps,
                        elementwise_affine=module.elementwise_affine)
        (eps, offset), _ = _rms_form(module)
        return dict(normalized_shape=tuple(module.weight.shape), eps=eps, elementwise_affine=True, unit_offset=offset)
    # bias=False (no bias under an affine map) is kept for every grouping
    if kind == "group":
        return dict(num_groups=module.num_groups, num_channels=module.num_channels, eps=module.eps, affine=module.affine,
                    bias=module.bias is not None or not module.affine)
    return dict(num_features=module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                track_running_stats=module.track_running_stats, bias=module.bias is not None or not module.affine)


def _factory_kwargs(module: nn.Module) -> dict:
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if t.is_floating_point():
            return {"device": t.device, "dtype": t.dtype}
    return {}


_POINTWISE = {"dyt": DynamicTanh, "derf": DynamicErf}  # the point-wise peers, by target name


def _parse_target(target: str) -> tuple[str, Optional[str], Optional[str]]:
    """-> (family, op, only_kind): family is 'ib', 'dyt', 'derf', 'normalnorm'; only_kind restricts sources."""
    if not isinstance(target, str):
        raise TypeError(f"target must be a str (an op such as 'tanh', a registry name, 'normalnorm' or 'dyt'); "
                        f"got {type(target).__name__}")
    key = canonical_name(target)
    op = ALIASES.get(key, key)
    if op in COMPRESSIONS:
        return "ib", op, None
    if key.startswith("ib_"):
        rest = key[3:]
        if rest in COMPRESSIONS:
            return "ib", rest, None
        grouping, _, op = rest.rpartition("_")
        if grouping in IB_GROUPINGS and op in COMPRESSIONS:
            return "ib", op, grouping
    if key in _POINTWISE:
        return key, None, None
    if key == "normalnorm":
        return "normalnorm", None, None
    if key.startswith("normalnorm_") and key in _REGISTRY:
        return "normalnorm", None, key[len("normalnorm_"):]
    raise ValueError(f"target must be a compression op ({sorted(COMPRESSIONS)}, or 'ib_<op>'), a registry name "
                     f"'ib_<grouping>_<op>' with grouping in {sorted(IB_GROUPINGS)}, 'normalnorm[_<grouping>]' "
                     f"'dyt' or 'derf'; got {target!r}")


def _build(family: str, op: Optional[str], kind: str, src: nn.Module, layer_kwargs: dict) -> Optional[nn.Module]:
    cfg = _source_config(src, kind)
    fk = _factory_kwargs(src)
    layer_kwargs = dict(layer_kwargs)
    affine = layer_kwargs.pop("affine", None)
    if affine is not None:  # one switch for the affine recovery, whatever the layer calls it
        if family in _POINTWISE:
            raise ValueError(f"affine must not be given for target {family!r} (a point-wise peer always has its affine map)")
        cfg["elementwise_affine" if kind in ("layer", "rms") else "affine"] = bool(affine)
    offset = cfg.pop("unit_offset", False)  # Gemma's (1 + weight) gain: IBRMSNorm keeps it; the peers take 1 + weight
    if family == "ib":
        return IB_CLASS_BY_GROUPING[kind](**cfg, **fk, compression=op, **layer_kwargs,
                                          **({"unit_offset": True} if offset else {}))
    if family in _POINTWISE:
        cls = _POINTWISE[family]
        cfg.pop("bias", None)
        if kind in ("layer", "rms"):
            return cls(cfg["normalized_shape"], channels_last=True, **fk, **layer_kwargs)
        channels = cfg["num_channels"] if kind == "group" else cfg["num_features"]
        return cls(channels, channels_last=False, **fk, **layer_kwargs)
    name = _NORMALNORM.get(kind)
    if name is None:
        return None
    if kind == "rms":  # NormalNorm centres; nn.RMSNorm's eps=None means the dtype's machine epsilon
        eps = cfg["eps"] if cfg["eps"] is not None else default_eps(fk.get("dtype", torch.float32))
        cfg = dict(cfg, bias=False, eps=eps)
    if kind.startswith("batch") or kind == "group":
        cfg.pop("bias")  # NormalNorm's batch layers have no bias switch
    return _REGISTRY[name](**cfg, **fk, **layer_kwargs)


@torch.no_grad()
def _copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Copy the affine weights and the running statistics the two layers share by name."""
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        s, d = getattr(src, name, None), getattr(dst, name, None)
        if isinstance(s, torch.Tensor) and isinstance(d, torch.Tensor) and s.shape == d.shape:
            d.copy_(s)


def convert_norms(model: nn.Module, target: str, **layer_kwargs: Any) -> ConversionReport:
    """Replace, in place and recursively, every base norm of ``model`` by its IBNorm grouping or a peer.

    ``target``: an op (``"power"``, ``"log"``, ``"tanh"``, ``"none"``, or ``"ib_tanh"``...) converts
    every norm to the matching grouping; a full name (``"ib_layer_tanh"``, ``"normalnorm_batch2d"``)
    converts only norms of that grouping; ``"normalnorm"``, ``"dyt"`` and ``"derf"`` convert to those peers.
    ``layer_kwargs`` go to the new layers' constructors (``strength=0.3``, ``alpha_init=0.8``...);
    ``affine=False`` drops the affine recovery whatever the layer calls the switch.

    Sources: ``nn.LayerNorm``, ``nn.RMSNorm`` and Hugging Face RMSNorms, ``nn.BatchNorm1d/2d/3d``,
    ``nn.GroupNorm``. Weights, biases, running statistics, eps, momentum, dtype, device and
    train/eval mode are kept; a module shared at several places stays shared.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if norm_kind(model) is not None:
        raise ValueError("model must contain the norm layers, not be one: convert its parent, or build the "
                         "layer with ibnorm.create_norm_layer")
    family, op, only_kind = _parse_target(target)
    if family == "ib" and "compression" in layer_kwargs:
        raise ValueError(f"compression must not be given with target {target!r}, which names the op; got "
                         f"compression={layer_kwargs['compression']!r}")
    report = ConversionReport(target=target)
    # Every replacement is built before any is made: an error leaves the model as it was.
    plan: list[tuple[nn.Module, str, nn.Module]] = []
    built: dict[int, nn.Module] = {}
    for parent_path, parent in list(model.named_modules()):
        for child_name, child in list(parent._modules.items()):  # not named_children: it hides shared modules
            path = f"{parent_path}.{child_name}" if parent_path else child_name
            if child is None:
                continue
            kind = norm_kind(child)
            if kind is None:
                reason = not_converted_reason(child)
                if reason is not None:
                    report.skipped[path] = reason
                continue
            if id(child) not in built:
                if only_kind is not None and kind != only_kind:
                    report.skipped[path] = f"{type(child).__name__} is {kind}-grouped, target {target!r} is {only_kind}-grouped"
                    continue
                new = _build(family, op, kind, child, layer_kwargs)
                if new is None:
                    report.skipped[path] = f"no {family} layer for {kind} grouping"
                    continue
                _copy_state(child, new)
                if kind == "rms" and not isinstance(child, nn.RMSNorm) and _rms_form(child)[0][1] and \
                        not getattr(new, "unit_offset", False):
                    with torch.no_grad():  # a peer without the offset form: its gain is 1 + the offset
                        new.weight.add_(1.0)
                new.train(child.training)
                built[id(child)] = new
                report.replaced[type(child).__name__] += 1
                report.paths.append((path, type(child).__name__, type(new).__name__))
            plan.append((parent, child_name, built[id(child)]))
    for parent, child_name, new in plan:  # a module shared at several places stays shared
        setattr(parent, child_name, new)
    if report.total:
        _record_in_config(model, target, layer_kwargs)
    return report


# ---- saving and reloading converted Hugging Face models --------------------------------------------------------

CONFIG_KEY = "ibnorm_conversions"  # the list of convert_norms calls, kept in a PreTrainedModel's config


def _record_in_config(model: nn.Module, target: str, layer_kwargs: dict) -> None:
    """Note the conversion in a Hugging Face config, which save_pretrained writes to config.json."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        return
    try:
        json.dumps(layer_kwargs)
    except TypeError as e:
        raise TypeError(f"layer_kwargs must be JSON values to be recorded in the model's config; got {layer_kwargs!r}") from e
    setattr(config, CONFIG_KEY, list(getattr(config, CONFIG_KEY, None) or []) + [{"target": target, "kwargs": layer_kwargs}])


def _saved_state(path: Path) -> dict:
    """Every tensor of a save_pretrained directory: safetensors or torch files, sharded or not."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = path / index_name
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else \
            ([single] if (path / single).exists() else [])
        if files:
            state = {}
            for name in files:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file
                    state.update(load_file(str(path / name)))
                else:
                    state.update(torch.load(path / name, map_location="cpu", weights_only=True))
            return state
    raise FileNotFoundError(f"path must be a save_pretrained directory with model.safetensors or pytorch_model.bin; "
                            f"found neither in {path}")


def _read_config(path: Path) -> dict:
    """config.json of a save_pretrained directory (empty when absent or unreadable: from_pretrained then says why)."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def from_pretrained(model_class: Any, path: str | Path, **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(path, **kwargs)``, then the conversions recorded in its config reapplied and
    every saved weight and buffer loaded: learned strengths, running statistics and the layers' settings.

    Saving is ``model.save_pretrained(path)`` after :func:`convert_norms`; a model never converted loads as usual.
    """
    conversions = getattr(_read_config(Path(path)), "get", lambda *a: None)(CONFIG_KEY) or []
    if conversions:  # the base model loads first and does not know the norm layers' keys: we load them below, and
        # refuse any key that fits neither, so transformers' report of them as UNEXPECTED would only mislead
        from transformers.utils import logging as hf_logging
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = model_class.from_pretrained(path, **kwargs)
        finally:
            hf_logging.set_verbosity(level)
    else:
        model = model_class.from_pretrained(path, **kwargs)
    conversions = getattr(model.config, CONFIG_KEY, None) or []
    for record in conversions:
        convert_norms(model, record["target"], **record["kwargs"])
    if not conversions:
        return model
    missing, unexpected = model.load_state_dict(_saved_state(Path(path)), strict=False)
    norm_paths = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, IB_LAYERS + PEERS))
    lost = [k for k in missing if k.startswith(norm_paths)]
    if lost or unexpected:
        raise ValueError(f"{path} does not fit the converted model: norm-layer keys missing {lost}, "
                         f"unexpected {list(unexpected)}")
    return model
