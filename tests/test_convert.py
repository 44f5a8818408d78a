"""convert_norms on plain modules and the four Hugging Face model families."""
import pytest
import torch
from torch import nn

import ibnorm
from ibnorm.convert import norm_kind

transformers = pytest.importorskip("transformers")


def tiny_models():
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, ResNetConfig,
                              ResNetForImageClassification, ViTConfig, ViTForImageClassification)
    torch.manual_seed(0)
    return {
        "gpt2": (GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2)),
                 lambda: {"input_ids": torch.randint(0, 97, (2, 16))}),
        "llama": (LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)),
                  lambda: {"input_ids": torch.randint(0, 97, (2, 16))}),
        "vit": (ViTForImageClassification(ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                                    num_labels=10)),
                lambda: {"pixel_values": torch.randn(2, 1, 28, 28)}),
        "resnet": (ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16],
                                                             depths=[1, 1], layer_type="basic", num_labels=10)),
                   lambda: {"pixel_values": torch.randn(4, 1, 28, 28)}),
    }


MODELS = tiny_models()
EXPECTED = {"gpt2": ("LayerNorm", "IBLayerNorm"), "llama": ("LlamaRMSNorm", "IBRMSNorm"),
            "vit": ("LayerNorm", "IBLayerNorm"), "resnet": ("BatchNorm2d", "IBBatchNorm2d")}


def count_base_norms(model):
    return sum(norm_kind(m) is not None for m in model.modules())


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("identity", [dict(target="none"), dict(target="power", strength=1.0)])
def test_identity_conversion_keeps_logits(family, identity):
    import copy
    model, inputs = MODELS[family]
    model = copy.deepcopy(model)
    if family == "resnet":  # give the BatchNorms non-trivial running stats first
        model.train()
        for _ in range(3):
            model(**inputs())
    model.eval()
    x = inputs()
    with torch.no_grad():
        before = model(**x).logits
    n = count_base_norms(model)
    kw = dict(identity)
    report = ibnorm.convert_norms(model, kw.pop("target"), **kw)
    src, dst = EXPECTED[family]
    assert report.replaced == {src: n} and report.total == n > 0 and not report.skipped
    assert count_base_norms(model) == 0
    assert {d for _, _, d in report.paths} == {dst}
    assert not model.training and all(not m.training for m in model.modules())
    with torch.no_grad():
        after = model(**x).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("target", ["power", "log", "tanh", "dyt", "derf", "normalnorm"])
def test_converted_model_trains_a_step(family, target):
    import copy
    model, inputs = MODELS[family]
    model = copy.deepcopy(model).train()
    report = ibnorm.convert_norms(model, target)
    assert report.total > 0
    x = inputs()
    if "input_ids" in x:
        out = model(**x, labels=x["input_ids"])
    else:
        out = model(**x, labels=torch.randint(0, 10, (x["pixel_values"].shape[0],)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)


def test_keeps_weights_running_stats_eps_dtype_and_sharing():
    ln = nn.LayerNorm(6, eps=1e-3, dtype=torch.float64)
    bn = nn.BatchNorm2d(3, momentum=0.2)
    with torch.no_grad():
        ln.weight.uniform_(), ln.bias.uniform_()
        bn.running_mean.uniform_(), bn.running_var.uniform_(1, 2)
        bn.num_batches_tracked.fill_(7)
    model = nn.ModuleDict({"a": ln, "b": ln, "seq": nn.Sequential(bn, nn.GroupNorm(1, 3), nn.RMSNorm(3, eps=None))})
    model.eval()
    report = ibnorm.convert_norms(model, "ib_t", strength=0.25)
    new = model["a"]
    assert model["b"] is new  # shared stays shared
    assert isinstance(new, ibnorm.IBLayerNorm) and new.eps == 1e-3 and new.weight.dtype == torch.float64
    assert torch.equal(new.weight, ln.weight) and torch.equal(new.bias, ln.bias) and new.init_strength == 0.25
    nb = model["seq"][0]
    assert isinstance(nb, ibnorm.IBBatchNorm2d) and nb.momentum == 0.2 and int(nb.num_batches_tracked) == 7
    assert torch.equal(nb.running_mean, bn.running_mean) and torch.equal(nb.running_var, bn.running_var)
    assert isinstance(model["seq"][1], ibnorm.IBGroupNorm) and isinstance(model["seq"][2], ibnorm.IBRMSNorm)
    assert model["seq"][2].eps is None
    assert report.replaced == {"LayerNorm": 1, "BatchNorm2d": 1, "GroupNorm": 1, "RMSNorm": 1}


def test_grouping_restricted_target_skips_others():
    model = nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4))
    report = ibnorm.convert_norms(model, "ib_layer_log")
    assert isinstance(model[0], ibnorm.IBLayerNorm) and isinstance(model[1], nn.BatchNorm1d)
    assert list(report.skipped) == ["1"] and "batch1d" in report.skipped["1"]
    report = ibnorm.convert_norms(nn.Sequential(nn.BatchNorm3d(2)), "normalnorm")
    assert report.total == 0 and report.skipped
    model = nn.Sequential(nn.BatchNorm2d(4), nn.LayerNorm(4))
    ibnorm.convert_norms(model, "dyt")
    assert not model[0].channels_last and model[1].channels_last
    model = nn.Sequential(nn.BatchNorm2d(4), nn.LayerNorm(4))
    ibnorm.convert_norms(model, "derf")
    assert all(isinstance(m, ibnorm.DynamicErf) for m in model) and not model[0].channels_last and model[1].channels_last


def test_affine_switch():
    model = nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4), nn.RMSNorm(4))
    ibnorm.convert_norms(model, "tanh", affine=False)
    assert model[0].weight is None and model[1].weight is None and model[2].weight is None
    with pytest.raises(ValueError, match="affine"):
        ibnorm.convert_norms(nn.Sequential(nn.LayerNorm(4)), "dyt", affine=False)


def _transformers_norm_classes() -> dict:
    """Every class named ``...Norm`` in transformers' modeling modules (about 280), imported."""
    import importlib
    import os
    import re
    import transformers.models as tm
    found = {}
    root = os.path.dirname(tm.__file__)
    for d in sorted(os.listdir(root)):
        folder = os.path.join(root, d)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            if not (f.startswith("modeling_") and f.endswith(".py")) or f.startswith(("modeling_tf", "modeling_flax")):
                continue
            with open(os.path.join(folder, f)) as fh:
                names = re.findall(r"^class (\w+Norm)\(", fh.read(), re.M)
            if not names:
                continue
            try:
                module = importlib.import_module(f"transformers.models.{d}.{f[:-3]}")
            except Exception:  # a model whose optional dependency is absent
                continue
            for name in names:
                cls = getattr(module, name, None)
                if isinstance(cls, type) and issubclass(cls, nn.Module):
                    found.setdefault(name, cls)
    return found


def test_every_transformers_norm_is_converted_exactly_or_listed_with_its_reason():
    """Scan transformers for ``*Norm`` classes: each one that builds from a width is either converted (exactly: the
    identity op reproduces its output) or named in the report's skipped list with a reason. Never silence."""
    import warnings
    warnings.filterwarnings("ignore")
    classes = _transformers_norm_classes()
    assert len(classes) > 150, len(classes)
    built, converted, listed = 0, [], []
    for name, cls in classes.items():
        layer = None
        for kwargs in ({}, {"eps": 1e-6}):
            try:
                layer = cls(8, **kwargs)
                break
            except Exception:
                continue
        if layer is None:
            continue
        built += 1
        model = nn.Sequential(layer)
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(0.5, 1.5)
        model.eval()
        x = torch.randn(2, 3, 8)
        try:
            with torch.no_grad():
                before = model(x)
        except Exception:
            before = None
        report = ibnorm.convert_norms(model, "none")
        if report.total:
            converted.append(name)
            if isinstance(before, torch.Tensor):
                with torch.no_grad():
                    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4, msg=name)
        else:
            assert any(name in why for why in report.skipped.values()), f"{name} neither converted nor listed"
            listed.append(name)
    assert built > 200 and len(converted) > 180, (built, len(converted))
    assert {"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm", "T5LayerNorm", "LlamaRMSNorm"} <= set(converted)
