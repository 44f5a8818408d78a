"""The scale presets: the paper's model sizes, built from transformers configs on the meta device, and one training
step of each at reduced size with the base norm and with IBNorm."""
import pytest
import torch

from ibnorm.lab.models import MINI_PRESETS, PRESETS, build_model
from ibnorm.lab.sweep import ALL_MODELS
from ibnorm.lab.tasks import task_kind

# millions of parameters (vision: without the classifier head), from the table
SIZES = {("gpt2-124m", 50257): 124.44, ("gpt2-355m", 50257): 354.82, ("llama-60m", 32000): 58.07,
         ("llama-60m", 50257): 76.77, ("llama-130m", 32000): 134.11, ("llama-130m", 50257): 162.15,
         ("llama-350m", 32000): 367.97, ("llama-350m", 50257): 405.36, ("vit-s16", None): 21.67,
         ("resnet18", None): 11.18, ("resnet50", None): 23.51}


@pytest.mark.parametrize("name, vocab", list(SIZES))
def test_scale_preset_parameter_counts_on_the_meta_device(name, vocab):
    model, _ = build_model(name, "ib_tanh", device="meta", vocab_size=vocab)
    params = list(model.named_parameters())
    assert all(p.device.type == "meta" for _, p in params)  # nothing allocated
    count = sum(p.numel() for n, p in params if not n.startswith("classifier"))
    assert count / 1e6 == pytest.approx(SIZES[(name, vocab)], rel=0.01)


def test_the_grids_keep_the_mini_models():
    assert ALL_MODELS == MINI_PRESETS == ["gpt2-mini", "llama-mini", "vit-mini", "resnet-mini"]


REDUCED = {"gpt2-124m": dict(width=32, depth=2, heads=4, context=16, vocab_size=64),
           "gpt2-355m": dict(width=32, depth=2, heads=4, context=16, vocab_size=64),
           "llama-60m": dict(width=32, depth=2, heads=4, context=16, vocab_size=64),
           "llama-130m": dict(width=32, depth=2, heads=4, context=16, vocab_size=64),
           "llama-350m": dict(width=32, depth=2, heads=4, context=16, vocab_size=64),
           "vit-s16": dict(width=32, depth=2, heads=4, image_size=32, num_labels=5),
           "resnet18": dict(width=8, num_labels=5), "resnet50": dict(width=8, num_labels=5)}


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.scale])
@pytest.mark.parametrize("norm", ["base", "ib_tanh"])
def test_one_training_step_of_every_scale_preset_at_reduced_size(name, norm):
    torch.manual_seed(0)
    model, report = build_model(name, norm, **REDUCED[name])
    assert (report.total > 0) == (norm != "base")
    kind = task_kind(name)
    if kind.name == "lm":
        x = torch.randint(0, 64, (2, 16))
        loss = model(input_ids=x, labels=x).loss
    else:
        size = REDUCED[name].get("image_size", 64)
        loss = model(pixel_values=torch.randn(2, 3, size, size), labels=torch.tensor([0, 4])).loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="heads must be > 0"):
        build_model("gpt2-124m", device="meta", heads=0)
    with pytest.raises(ValueError, match="depth is not an option of the ResNet presets"):
        build_model("resnet18", device="meta", depth=3)
