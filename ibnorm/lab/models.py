"""Model presets built from ``transformers`` configs (no weights downloaded), with the norm chosen by name.

``build_model("gpt2-mini", "ib_tanh")`` builds the preset and converts its norms with
:func:`ibnorm.convert_norms`. A norm is given as ``NAME`` or ``NAME:key=value,key=value``:

- ``base`` (or the family's own norm name, e.g. ``layernorm`` for GPT-2): no conversion;
- ``ib_power`` / ``ib_log`` / ``ib_tanh`` / ``ib_none``: IBNorm with the family's grouping;
- a full registry name such as ``ib_rms_tanh``: must match the family's grouping;
- ``normalnorm``, ``dyt``, ``derf``: the peers.

Keyword options go to the new layers (``ib_tanh:strength=0.3``, ``ib_log:order=standardize_then_compress``,
``dyt:alpha_init=1.0``); an op given no strength takes ``LAB_STRENGTH`` (0.5); ``affine=0`` removes the affine recovery (``base:affine=0`` is the base norm
without it, built as the identity IBNorm op, which equals the base norm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..convert import ConversionReport, convert_norms
from ..ops import COMPRESSIONS


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    task: str  # "lm" or "vision"
    base_norm: str  # registry name of the family's own norm
    build: Callable[[dict], nn.Module]  # gets ``defaults`` updated with the caller's overrides
    defaults: dict
    scale: bool = False  # a model at the paper's size (for GPUs and the user's own data), not a grid's mini model


def _gpt2(o: dict) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=o["vocab_size"], n_positions=o["context"], n_embd=o["width"],
                     n_layer=o["depth"], n_head=o.get("heads", 4), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(cfg)


def _llama(o: dict) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    w = o["width"]
    # The mini preset's SwiGLU width follows its width; the GaLore/ReLoRA sizes give theirs (o["mlp"]).
    mlp = o.get("mlp") or int(w * 8 / 3 // 8 * 8)
    heads = o.get("heads", 4)
    cfg = LlamaConfig(vocab_size=o["vocab_size"], hidden_size=w, intermediate_size=mlp,
                      num_hidden_layers=o["depth"], num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=o["context"], tie_word_embeddings=o.get("tied", True),
                      bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(cfg)


def _vit(o: dict) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification
    w = o["width"]
    cfg = ViTConfig(image_size=o.get("image_size", 28), patch_size=o.get("patch", 4), num_channels=o.get("channels", 1),
                    hidden_size=w, num_hidden_layers=o["depth"], num_attention_heads=o.get("heads", 4),
                    intermediate_size=o.get("mlp") or 2 * w, num_labels=o.get("num_labels", 10),
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg)


def _resnet(o: dict) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification
    w = o["width"]
    cfg = ResNetConfig(num_channels=1, embedding_size=w, hidden_sizes=[w, 2 * w, 4 * w], depths=[1, 1, 1],
                       layer_type="basic", num_labels=10, downsample_in_first_stage=False)
    model = ResNetForImageClassification(cfg)
    # The 7x7/2 stem plus max-pool would shrink 28x28 to 7x7 at once; a 3x3/1 stem, as small-image ResNets use.
    emb = model.resnet.embedder
    emb.embedder.convolution = nn.Conv2d(1, w, kernel_size=3, stride=1, padding=1, bias=False)
    emb.pooler = nn.Identity()
    return model


def _resnet_imagenet(o: dict) -> nn.Module:
    """torchvision's ResNet-18/50 layout from a transformers config: the ImageNet stem (7x7/2 conv, max-pool), four
    stages; ``width`` is the stem's channels (64), the stages' widths follow it."""
    from transformers import ResNetConfig, ResNetForImageClassification
    if o.get("depth") is not None:
        raise ValueError("depth is not an option of the ResNet presets; their stages are fixed ([2,2,2,2], [3,4,6,3])")
    w, expand = o["width"], 4 if o["layer_type"] == "bottleneck" else 1
    cfg = ResNetConfig(num_channels=o.get("channels", 3), embedding_size=w,
                       hidden_sizes=[w * expand * 2 ** i for i in range(4)], depths=list(o["stages"]),
                       layer_type=o["layer_type"], num_labels=o.get("num_labels", 1000),
                       downsample_in_first_stage=False)
    return ResNetForImageClassification(cfg)


PRESETS: dict[str, Preset] = {
    "gpt2-mini": Preset("gpt2-mini", "gpt2", "lm", "layernorm", _gpt2, {"context": 128, "width": 128, "depth": 4}),
    "llama-mini": Preset("llama-mini", "llama", "lm", "rmsnorm", _llama, {"context": 128, "width": 128, "depth": 4}),
    "vit-mini": Preset("vit-mini", "vit", "vision", "layernorm", _vit, {"width": 64, "depth": 4}),
    "resnet-mini": Preset("resnet-mini", "resnet", "vision", "batchnorm2d", _resnet, {"width": 16}),
    # The paper's sizes (for GPUs and the user's own data). GPT-2 small and medium as OpenAI released them;
    # LLaMA-60M/130M/350M as GaLore and ReLoRA define them (untied embeddings, SwiGLU widths 1376/2048/2736);
    # ViT-S/16 at 224x224; ResNet-18/50 with the ImageNet stem. The vocabulary and the classes follow the data.
    "gpt2-124m": Preset("gpt2-124m", "gpt2", "lm", "layernorm", _gpt2,
                        {"context": 1024, "width": 768, "depth": 12, "heads": 12}, scale=True),
    "gpt2-355m": Preset("gpt2-355m", "gpt2", "lm", "layernorm", _gpt2,
                        {"context": 1024, "width": 1024, "depth": 24, "heads": 16}, scale=True),
    "llama-60m": Preset("llama-60m", "llama", "lm", "rmsnorm", _llama,
                        {"context": 1024, "width": 512, "depth": 8, "heads": 8, "mlp": 1376, "tied": False}, scale=True),
    "llama-130m": Preset("llama-130m", "llama", "lm", "rmsnorm", _llama,
                         {"context": 1024, "width": 768, "depth": 12, "heads": 12, "mlp": 2048, "tied": False},
                         scale=True),
    "llama-350m": Preset("llama-350m", "llama", "lm", "rmsnorm", _llama,
                         {"context": 1024, "width": 1024, "depth": 24, "heads": 16, "mlp": 2736, "tied": False},
                         scale=True),
    "vit-s16": Preset("vit-s16", "vit", "vision", "layernorm", _vit,
                      {"width": 384, "depth": 12, "heads": 6, "mlp": 1536, "image_size": 224, "patch": 16,
                       "channels": 3, "num_labels": 1000}, scale=True),
    "resnet18": Preset("resnet18", "resnet", "vision", "batchnorm2d", _resnet_imagenet,
                       {"width": 64, "stages": (2, 2, 2, 2), "layer_type": "basic", "channels": 3}, scale=True),
    "resnet50": Preset("resnet50", "resnet", "vision", "batchnorm2d", _resnet_imagenet,
                       {"width": 64, "stages": (3, 4, 6, 3), "layer_type": "bottleneck", "channels": 3}, scale=True),
}
MINI_PRESETS = [name for name, p in PRESETS.items() if not p.scale]  # the grids' and the reproduction's models

_BASE_ALIASES = {"base", "layernorm", "rmsnorm", "batchnorm2d"}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}; got {name!r}")
    return PRESETS[name]


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_norm_spec(spec: str) -> tuple[str, dict]:
    """``"ib_tanh:strength=0.3,affine=0"`` -> ``("ib_tanh", {"strength": 0.3, "affine": False})``."""
    name, _, opts = spec.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"norm options must be key=value; got {item!r} in {spec!r}")
        kwargs[key.strip()] = _parse_value(value.strip())
    if "affine" in kwargs:
        kwargs["affine"] = bool(kwargs["affine"])
    return name.strip().lower(), kwargs


# An IBNorm op whose spec names no strength gets this one in the lab, whatever the library's default is, so that a
# committed result keeps the meaning it had when it ran (the reproduction's "ib_tanh" is strength 0.5).
LAB_STRENGTH = 0.5


def apply_norm(model: nn.Module, preset: Preset, norm: str) -> ConversionReport:
    """Convert ``model``'s norms as ``norm`` says (see the module docstring)."""
    name, kwargs = parse_norm_spec(norm)
    op = COMPRESSIONS.get(name.rsplit("_", 1)[-1])
    if op is not None and op.has_strength and "strength" not in kwargs:
        kwargs["strength"] = LAB_STRENGTH
    if name in _BASE_ALIASES:
        if name not in ("base", preset.base_norm):
            raise ValueError(f"norm {name!r} is not {preset.name}'s base norm ({preset.base_norm}); use 'base'")
        if not kwargs:
            return ConversionReport(target="base")
        name = "none"  # the identity op equals the base norm; it carries options such as affine=0
    try:
        report = convert_norms(model, name, **kwargs)
    except TypeError as e:  # a misspelled option or a value of the wrong type, named by the layer
        raise ValueError(f"norm {norm!r}: {e}") from None
    if report.total == 0:
        raise ValueError(f"norm {norm!r} converts no layer of {preset.name} (skipped: {report.skipped})")
    return report


def build_model(name: str, norm: str = "base", device: Any = None, **overrides: Any) -> tuple[nn.Module, ConversionReport]:
    """Build a preset (``vocab_size``, ``context``, ``width``, ``depth``, ``heads``, ``image_size``, ``num_labels``
    overridable; None leaves the preset's) and apply ``norm``. ``device="meta"`` allocates no weights: a preset at
    scale is built, converted and counted without its memory."""
    preset = get_preset(name)
    import torch
    import transformers
    transformers.logging.set_verbosity_error()  # config chatter about unused generation settings
    opts = dict(preset.defaults, **{k: v for k, v in overrides.items() if v is not None})
    opts.setdefault("vocab_size", 50257 if preset.scale else 256)  # GPT-2's vocabulary when the data names none
    for key in ("width", "depth", "heads", "context", "image_size", "num_labels", "vocab_size"):
        if isinstance(opts.get(key), int) and opts[key] <= 0:
            raise ValueError(f"{key} must be > 0; got {opts[key]}")
    if device is None:
        model = preset.build(opts)
    else:
        with torch.device(device):
            model = preset.build(opts)
    report = apply_norm(model, preset, norm)
    return model, report
