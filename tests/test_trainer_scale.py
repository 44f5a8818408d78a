"""The trainer's options for scale (accumulation, mixed precision, SGD, recipes) and the pin that its defaults still
compute what the reproduction's runs computed."""
import json
from pathlib import Path

import pytest
import torch

from ibnorm.lab.train import TrainConfig, train
from test_data import needs_austen

REPO = Path(__file__).resolve().parents[1]
LM = dict(model="llama-mini", width=32, depth=1, context=32, batch_size=8, steps=4, eval_every=4, eval_batches=1,
          warmup_steps=1, progress=False, threads=1)


@needs_austen
def test_gradient_accumulation_makes_the_same_update_as_the_whole_batch(tmp_path):
    whole = train(TrainConfig(**LM, grad_accum=1), tmp_path / "one")
    parts = train(TrainConfig(**LM, grad_accum=4), tmp_path / "four")
    for (_, a), (_, b) in zip(whole["curve"], parts["curve"]):
        assert a == pytest.approx(b, rel=1e-5)
    assert whole["final"]["val_loss"] == pytest.approx(parts["final"]["val_loss"], rel=1e-5)
    wa, wb = torch.load(tmp_path / "one" / "model.pt"), torch.load(tmp_path / "four" / "model.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="grad_accum .* must divide"):
        train(TrainConfig(**LM, grad_accum=3), tmp_path / "three")


@needs_austen
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_step_on_cpu(tmp_path, precision):
    r = train(TrainConfig(**{**LM, "steps": 2, "eval_every": 2}, norm="ib_tanh", precision=precision), tmp_path / "r")
    assert all(torch.isfinite(torch.tensor(v)) for _, v in r["curve"])


@needs_austen
def test_sgd_trains(tmp_path):
    r = train(TrainConfig(**LM, optimizer="sgd", lr=0.05), tmp_path / "r")
    assert r["curve"][-1][1] < r["curve"][0][1] + 1.0 and r["config"]["optimizer"] == "sgd"


def test_a_config_file_sets_fields_and_flags_override_it(tmp_path, capsys):
    from ibnorm.lab.cli import build_parser, main, read_config_file
    path = tmp_path / "r.toml"
    path.write_text('model = "llama-mini"\nnorm = "ib_tanh"\nsteps = 7\nlr = 0.002\ngrad_accum = 2\n')
    fields = read_config_file(str(path))
    assert fields == {"model": "llama-mini", "norm": "ib_tanh", "steps": 7, "lr": 0.002, "grad_accum": 2}
    path.write_text('model = "llama-mini"\nlearning_rate = 0.1\n')
    assert main(["train", "--config", str(path)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    for recipe in sorted((REPO / "recipes").glob("*.toml")):  # every recipe is a valid config of its preset
        cfg = TrainConfig(**read_config_file(str(recipe))).resolved()
        assert cfg.model == recipe.stem
    args = build_parser().parse_args(["train", "--config", str(recipe), "--steps", "3"])
    assert args.steps == 3  # the flag, applied over the file in cmd_train


@needs_austen
def test_the_defaults_still_compute_a_committed_reproduction_run():
    """The first curve point (mean loss of steps 1-10) of a committed main-table run, recomputed bit for bit."""
    import dataclasses
    import tempfile
    committed = json.loads((REPO / "results" / "reproduction" / "runs" / "main__llama-mini__base__s0.json").read_text())
    cfg = dataclasses.replace(TrainConfig(**committed["config"]), steps=committed["config"]["steps"], stop_after=10,
                              checkpoint_every=10, progress=False, threads=1)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, d)
        ckpt = torch.load(Path(d) / "ckpt.pt", weights_only=False)
    assert ckpt["curve"][0] == committed["curve"][0]


@needs_austen
def test_a_checkpoint_is_written_when_its_minutes_have_passed(tmp_path):
    """checkpoint_minutes writes a checkpoint between the step-count ones (here: at step 10, of every 1000 steps)."""
    cfg = TrainConfig(**{**LM, "steps": 30, "eval_every": 30}, checkpoint_every=1000, checkpoint_minutes=1e-9,
                      stop_after=10)
    assert train(cfg, tmp_path / "r") == {"stopped_at": 10, "checkpoint": str(tmp_path / "r" / "ckpt.pt")}
    r = train(TrainConfig(**{**LM, "steps": 30, "eval_every": 30}, checkpoint_every=1000), tmp_path / "r")
    assert r["resumed_from"] == [10]  # minutes are not part of what a run computes: it resumes with another value


def test_mfu_uses_the_peak_of_the_device_or_the_flag():
    from types import SimpleNamespace
    from ibnorm.lab.train import throughput
    task = SimpleNamespace(kind=SimpleNamespace(name="lm"))
    cfg = TrainConfig(model="gpt2-124m", batch_size=8, context=1024, peak_tflops=100.0).resolved()
    out = throughput(task, cfg, steps=10, seconds=2.0, n_params=1_000_000, device=torch.device("cpu"))
    assert out["tokens_per_s"] == 8 * 1024 * 10 / 2.0
    assert out["mfu"] == pytest.approx(6 * 1_000_000 * out["tokens_per_s"] / 100e12)
    assert "mfu" not in throughput(task, TrainConfig(model="gpt2-124m").resolved(), 10, 2.0, 1, torch.device("cpu"))


def test_device_flag_is_checked(capsys):
    from ibnorm.lab.cli import main
    assert main(["train", "--model", "llama-mini", "--device", "tpu", "--steps", "1"]) == 2
    assert "device (--device) must be auto, cpu or cuda" in capsys.readouterr().err


def test_the_write_barrier_has_its_own_timeout(monkeypatch):
    from ibnorm import config
    monkeypatch.setenv("IBNORM_WRITE_TIMEOUT", "7200")
    assert config.reload().write_timeout_s == 7200.0
    monkeypatch.setenv("IBNORM_WRITE_TIMEOUT", "an hour")
    with pytest.raises(ValueError, match="IBNORM_WRITE_TIMEOUT must be a number of seconds"):
        config.reload()
    monkeypatch.delenv("IBNORM_WRITE_TIMEOUT")
    assert config.reload().write_timeout_s == 3600.0


@needs_austen
def test_the_progress_bar_shows_throughput_and_mfu(tmp_path, capsys):
    """The bar's postfix carries tokens/s and, with a peak to divide by (--peak-tflops here, on CPU), MFU."""
    train(TrainConfig(**{**LM, "progress": True}, peak_tflops=1.0), tmp_path / "run")
    err = capsys.readouterr().err
    assert "tok/s=" in err and "mfu=" in err and "loss=" in err
    train(TrainConfig(**{**LM, "progress": True}), tmp_path / "no_peak")
    err = capsys.readouterr().err
    assert "tok/s=" in err and "mfu=" not in err  # no peak known on a CPU: no MFU
