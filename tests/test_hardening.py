"""Defects found by trying the library as a demanding user would (issue 10), each with the test that caught it."""
import os
import stat

import numpy as np
import pytest
import torch
from torch import nn

import ibnorm
from ibnorm.info import mutual_information
from test_data import needs_fashion


def test_infinite_eps_is_refused():
    with pytest.raises(ValueError, match="eps must be a finite float"):
        ibnorm.IBLayerNorm(8, eps=float("inf"))
    with pytest.raises(ValueError, match="eps must be a finite float"):
        ibnorm.IBBatchNorm2d(4, eps=float("nan"))


@pytest.mark.parametrize("target", [None, 5, nn.LayerNorm])
def test_convert_norms_rejects_a_target_of_the_wrong_type(target):
    model = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(TypeError, match="target must be a str"):
        ibnorm.convert_norms(model, target)
    assert isinstance(model[0], nn.LayerNorm)


def test_registry_name_and_keyword_must_agree():
    with pytest.raises(ValueError, match="'ib_layer_tanh' fixes compression='tanh'; it conflicts with compression='log'"):
        ibnorm.create_norm_layer("ib_layer_tanh", 16, compression="log")
    assert ibnorm.create_norm_layer("ib_layer_tanh", 16, compression="tanh").compression == "tanh"  # agreeing is fine


@pytest.mark.parametrize("cls", [ibnorm.BatchNormalNorm2d, ibnorm.IBBatchNorm2d])
def test_batch_layers_handle_batches_without_variance_like_batchnorm(cls):
    """One value per channel raises, as nn.BatchNorm does; an empty batch passes and leaves the running statistics."""
    for layer in (nn.BatchNorm2d(3), cls(3)):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            layer(torch.randn(1, 3, 1, 1))
        assert layer(torch.randn(0, 3, 2, 2)).shape == (0, 3, 2, 2)
        for name, buf in layer.named_buffers():
            assert torch.isfinite(buf.float()).all(), name
        assert torch.all(layer.running_var == 1) and torch.all(layer.running_mean == 0)
    layer = ibnorm.BatchNormalNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))


@pytest.mark.parametrize("method", ["ksg", "renyi", "binning"])
def test_a_constant_has_no_information(method):
    y = np.random.default_rng(0).standard_normal(500)
    for seed in (0, 1):
        kw = {"seed": seed} if method == "ksg" else {}
        assert mutual_information(np.ones(500), y, method, **kw) == 0.0
        assert mutual_information(y, np.full(500, 3.0), method, **kw) == 0.0


def test_written_files_follow_the_umask(tmp_path):
    from ibnorm.atomic import atomic_write_text
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from ibnorm.lab.cli import main
    base = ["train", "--model", "resnet-mini", "--steps", "1", "--no-progress", "--out", str(tmp_path / "r")]
    for spec, words in (("ib_tanh:strength=abc", "strength must be a float"),
                        ("ib_tanh:foo=1", "foo")):
        assert main([*base, "--norm", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ibnorm train: error: norm") and words in err and "\n" not in err, err
    with pytest.raises(SystemExit) as e:
        main([*base, "--sync-bn", "maybe"])
    assert e.value.code == 2 and "expected true or false" in capsys.readouterr().err


def test_a_corrupt_checkpoint_and_a_changed_config_are_named(tmp_path):
    from ibnorm.lab.train import TrainConfig, train
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"not a checkpoint")
    cfg = TrainConfig(model="resnet-mini", width=8, steps=2, progress=False)
    with pytest.raises(ValueError, match="cannot be read as a checkpoint.*delete it"):
        train(cfg, out)
    import dataclasses
    import json
    (out / "ckpt.pt").unlink()
    (out / "result.json").write_text(json.dumps({"config": dataclasses.asdict(dataclasses.replace(cfg, steps=3).resolved())}))
    with pytest.raises(ValueError, match=r"different configuration \(steps: 3 -> 2\)"):
        train(cfg, out)


# ---- settings travel with the weights; converted models reload ----------------------------------------------

def test_a_state_saved_with_other_settings_is_refused_by_name():
    saved = ibnorm.IBLayerNorm(8, compression="tanh", strength=0.3).state_dict()
    with pytest.raises(RuntimeError, match=r"strength: saved 0.3, this layer 0.9"):
        ibnorm.IBLayerNorm(8, compression="tanh", strength=0.9).load_state_dict(saved)
    with pytest.raises(RuntimeError, match=r"compression: saved 'tanh', this layer 'log'"):
        ibnorm.IBLayerNorm(8, compression="log", strength=0.3).load_state_dict(saved)
    with pytest.raises(RuntimeError, match=r"noise_train: saved 0.4"):
        ibnorm.LayerNormalNorm(8).load_state_dict(ibnorm.LayerNormalNorm(8, noise_train=0.4).state_dict())
    ibnorm.IBLayerNorm(8, compression="tanh", strength=0.3).half().load_state_dict(saved)  # dtype casts keep them
    old = {k: v for k, v in saved.items() if k != "norm_settings"}  # a state from before settings were saved
    ibnorm.IBLayerNorm(8, compression="tanh", strength=0.9).load_state_dict(old)


def test_plain_module_recipe_round_trip(tmp_path):
    """The README's recipe for a plain nn.Module: save the state dict; rebuild, convert the same way, load."""
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(64))

    model = build()
    ibnorm.convert_norms(model, "tanh", strength=0.3, learnable_strength=True)
    with torch.no_grad():
        model[3].strength_raw.fill_(1.7)
    model(torch.randn(8, 1, 6, 6))  # moves the running statistics
    model.eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = build()
    ibnorm.convert_norms(again, "tanh", strength=0.3, learnable_strength=True)
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    again.eval()
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(again(x), model(x))


@pytest.mark.parametrize("family", ["gpt2", "llama", "resnet"])
def test_save_pretrained_then_from_pretrained_gives_the_same_logits(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if family == "gpt2":
        cls, model = transformers.GPT2LMHeadModel, transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
        inputs = {"input_ids": torch.randint(0, 50, (2, 8))}
    elif family == "llama":
        cls, model = transformers.LlamaForCausalLM, transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=50, max_position_embeddings=16))
        inputs = {"input_ids": torch.randint(0, 50, (2, 8))}
    else:
        cls, model = transformers.ResNetForImageClassification, transformers.ResNetForImageClassification(
            transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                      layer_type="basic", num_labels=3))
        inputs = {"pixel_values": torch.randn(4, 1, 32, 32)}
    report = ibnorm.convert_norms(model, "tanh", strength=0.3, learnable_strength=True)
    assert report.total > 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ibnorm.IBBatchNorm2d) or hasattr(m, "strength_raw"):
                m.strength_raw.add_(0.7)  # a "learned" strength, not the initial one
    model.train()
    model(**inputs)  # running statistics, mean(c)/var(c)/var(u) included, move away from their init
    model.eval()
    model.save_pretrained(tmp_path)
    stock = cls.from_pretrained(tmp_path)  # what transformers alone gives back: the stock norms
    loaded = ibnorm.from_pretrained(cls, tmp_path).eval()
    want = model(**inputs).logits
    torch.testing.assert_close(loaded(**inputs).logits, want)
    assert not torch.allclose(stock.eval()(**inputs).logits, want, atol=1e-4)
    ours, theirs = model.state_dict(), loaded.state_dict()
    for key in ours:
        if key.endswith(("strength_raw", "running_mean_c", "running_var_c", "running_var_u", "norm_settings")):
            torch.testing.assert_close(theirs[key], ours[key], msg=key)


# ---- conversion: all or nothing, bias=False kept, what it left alone and why ----------------------------------

def test_bias_false_is_kept_for_every_grouping():
    model = nn.Sequential(nn.BatchNorm2d(4, bias=False), nn.GroupNorm(2, 4, bias=False), nn.Flatten(),
                          nn.LayerNorm(36, bias=False))
    ibnorm.convert_norms(model, "tanh")
    assert [type(m).__name__ for m in (model[0], model[1], model[3])] == ["IBBatchNorm2d", "IBGroupNorm", "IBLayerNorm"]
    for m in (model[0], model[1], model[3]):
        assert m.bias is None and m.weight is not None
    assert "bias" not in dict(model.named_parameters()).keys() and model(torch.randn(2, 4, 3, 3)).shape == (2, 36)


def test_conversion_is_all_or_nothing():
    model = nn.Sequential(nn.LayerNorm(4), nn.Unflatten(1, (4, 1)), nn.BatchNorm1d(4))
    with pytest.raises(TypeError):  # elementwise_affine fits the LayerNorm's replacement, not the BatchNorm's
        ibnorm.convert_norms(model, "tanh", elementwise_affine=False)
    assert type(model[0]) is nn.LayerNorm and type(model[2]) is nn.BatchNorm1d  # nothing was half converted
    mixed = nn.Sequential(nn.LayerNorm(4), nn.RMSNorm(4))  # nn.RMSNorm's eps=None becomes the dtype's epsilon
    ibnorm.convert_norms(mixed, "normalnorm")
    assert [type(m).__name__ for m in mixed] == ["LayerNormalNorm", "LayerNormalNorm"]
    assert mixed[1].eps == torch.finfo(torch.float32).eps


def test_what_conversion_leaves_alone_is_reported_with_the_reason():
    class MyLayerNorm(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) * 2

    class MyBatchNorm(nn.BatchNorm1d):
        pass

    model = nn.Sequential(MyLayerNorm(4), nn.Unflatten(1, (4, 1)), MyBatchNorm(4), nn.SyncBatchNorm(4))
    report = ibnorm.convert_norms(model, "tanh")
    assert report.total == 0 and type(model[0]) is MyLayerNorm
    assert "own forward" in report.skipped["0"] and "not a plain BatchNorm" in report.skipped["2"]
    assert "SyncBatchNorm" in report.skipped["3"]
    converted = nn.Sequential(nn.LayerNorm(4))
    ibnorm.convert_norms(converted, "tanh")
    again = ibnorm.convert_norms(converted, "log")
    assert again.total == 0 and "already IBLayerNorm" in again.skipped["0"]
    with pytest.raises(ValueError, match="compression must not be given with target 'ib_tanh'"):
        ibnorm.convert_norms(nn.Sequential(nn.LayerNorm(4)), "ib_tanh", compression="log")


def test_every_flag_has_help_and_shows_its_default():
    import argparse
    from ibnorm.lab.cli import build_parser
    top = build_parser()
    subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subparsers) == {"train", "compare", "ablate", "info", "bench", "reproduce", "report", "preregister",
                               "prepare-text"}
    for name, p in subparsers.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            takes_value = not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if takes_value and not action.required and action.option_strings:
                assert "default" in action.help, (name, action.dest, action.help)


def test_float_labels_get_a_warning():
    y = np.tile(np.arange(4.0), 100)
    x = y[:, None] + np.random.default_rng(0).standard_normal((400, 1))
    with pytest.warns(UserWarning, match="class labels"):
        mutual_information(x, y, "ksg")


def test_huge_rows_stay_finite_on_the_fast_path():
    x = torch.randn(4, 64, dtype=torch.float64).float() * 1e19
    fast = ibnorm.IBLayerNorm(64, compression="tanh")
    ref = ibnorm.IBLayerNorm(64, compression="tanh", impl="reference")
    y = fast(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_huge_batches_stay_finite_on_the_fast_path(layout):
    """Squares past float's range: channels_last's in-place passes hand over to the path that rescales."""
    x = (torch.randn(4, 20, 3, 3, dtype=torch.float64).float() * 1e19).contiguous(memory_format=layout)
    fast = ibnorm.IBBatchNorm2d(20, compression="tanh")
    ref = ibnorm.IBBatchNorm2d(20, compression="tanh", impl="reference")
    y = fast(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-4)


def test_a_wrong_norm_spec_is_reported_before_the_data_loads(tmp_path, monkeypatch):
    from ibnorm.lab import data as D
    from ibnorm.lab.train import TrainConfig, train
    monkeypatch.setattr(D, "_roots", lambda: [tmp_path])  # no dataset anywhere
    D.load_fashion_mnist.cache_clear()
    try:
        with pytest.raises(ValueError, match="converts no layer"):
            train(TrainConfig(model="resnet-mini", norm="ib_layer_tanh", width=8, steps=1, progress=False), tmp_path / "r")
    finally:
        D.load_fashion_mnist.cache_clear()


@needs_fashion
def test_rerunning_a_finished_run_says_nothing_was_trained(tmp_path, capsys):
    from ibnorm.lab.cli import main
    args = ["train", "--model", "resnet-mini", "--width", "8", "--steps", "2", "--eval-every", "2", "--eval-examples", "64",
            "--train-subset", "64", "--batch-size", "8", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    assert "nothing was trained" not in capsys.readouterr().err
    assert main(args) == 0
    assert "already holds this finished run; nothing was trained" in capsys.readouterr().err


@pytest.mark.parametrize("argv, names", [
    (["--eval-every", "0"], "eval_every (--eval-every) must be > 0"),
    (["--checkpoint-every", "0"], "checkpoint_every (--checkpoint-every) must be > 0"),
    (["--width", "0"], "width (--width) must be > 0"),
    (["--threads", "-1"], "threads (--threads) must be >= 0"),
    (["--train-subset", "0"], "train_subset (--train-subset) must be > 0"),
    (["--eval-examples", "-1"], "eval_examples (--eval-examples) must be >= 0"),
    (["--warmup-steps", "-3"], "warmup_steps (--warmup-steps) must be >= 0"),
    (["--grad-clip", "-1"], "grad_clip (--grad-clip) must be >= 0"),
    (["--lr", "0"], "lr (--lr) must be a finite number > 0"),
    (["--steps", "0"], "steps (--steps) must be > 0"),
])
def test_bad_counts_and_rates_are_one_line_with_exit_code_2(tmp_path, capsys, argv, names):
    from ibnorm.lab.cli import main
    assert main(["train", "--model", "resnet-mini", "--no-progress", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ibnorm train: error: ") and names in err and "\n" not in err, err


def test_cli_paths_and_lists_errors_are_one_line(tmp_path, capsys):
    from ibnorm.lab.cli import main
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [(["train", "--model", "resnet-mini", "--steps", "1", "--out", str(blocker / "run")], "Not a directory"),
             (["compare", "--norms", ","], "--norms must name at least one value"),
             (["compare", "--models", "bert-mini"], "--models accepts"),
             (["ablate", "strength", "--ops", "ib_foo"], "--ops accepts ib_power, ib_log, ib_tanh; got ib_foo")]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, err
    run = tmp_path / "done"
    run.mkdir()
    (run / "result.json").write_text("{not json")
    assert main(["train", "--model", "resnet-mini", "--steps", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(run / "result.json") in err and "\n" not in err


def test_a_resume_with_another_thread_count_is_refused_by_name(tmp_path):
    from ibnorm.lab.train import TrainConfig, train
    tiny = dict(model="resnet-mini", width=8, steps=4, batch_size=8, eval_every=4, eval_examples=32,
                train_subset=64, warmup_steps=1, progress=False, checkpoint_every=2)
    assert train(TrainConfig(**tiny, threads=1, stop_after=2), tmp_path / "r")["stopped_at"] == 2
    with pytest.raises(ValueError, match=r"threads: 1 -> 2"):
        train(TrainConfig(**tiny, threads=2), tmp_path / "r")


def test_grid_names_say_what_changed():
    import argparse
    from ibnorm.lab.cli import build_parser, grid_name
    args = build_parser().parse_args(["compare"])
    assert grid_name("quick", args, {}) == "quick"
    args = build_parser().parse_args(["compare", "--steps", "3", "--seeds", "0,1"])
    assert grid_name("quick", args, {"seeds": [0, 1]}) == "quick-seeds-0_1-steps3"
    assert isinstance(args, argparse.Namespace)


def test_from_pretrained_loads_without_a_table_of_unexpected_keys(tmp_path, capfd):
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, bos_token_id=None,
                                       eos_token_id=None))
    ibnorm.convert_norms(model, "tanh", learnable_strength=True)
    model.save_pretrained(tmp_path)
    capfd.readouterr()
    again = ibnorm.from_pretrained(GPT2LMHeadModel, tmp_path)
    out = capfd.readouterr()
    assert "UNEXPECTED" not in out.out + out.err
    x = torch.randint(0, 50, (1, 5))
    torch.testing.assert_close(again.eval()(x).logits, model.eval()(x).logits)
