"""Trainer: presets train with every fitting norm, kill -9 + resume gives the same metrics, sweeps resume."""
import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ibnorm.lab import sweep
from ibnorm.lab.report import summarize
from ibnorm.lab.models import build_model
from ibnorm.lab.train import TrainConfig, lr_at, param_groups, train
from test_data import needs_austen, needs_fashion

pytest.importorskip("transformers")

FITTING = {
    "gpt2-mini": ["base", "ib_layer_power", "ib_layer_log", "ib_layer_tanh", "ib_layer_none", "normalnorm_layer", "dyt"],
    "llama-mini": ["base", "ib_rms_power", "ib_rms_log", "ib_rms_tanh", "ib_rms_none", "normalnorm", "dyt"],
    "vit-mini": ["base", "ib_layer_power", "ib_layer_log", "ib_layer_tanh", "ib_layer_none", "normalnorm_layer", "dyt"],
    "resnet-mini": ["base", "ib_batch2d_power", "ib_batch2d_log", "ib_batch2d_tanh", "ib_batch2d_none", "normalnorm_batch2d", "dyt"],
}
TINY = dict(steps=3, eval_every=3, eval_batches=1, eval_examples=64, train_subset=256, batch_size=8, context=32,
            warmup_steps=1, progress=False)


def tiny(model, norm, **kw):
    width = {"resnet-mini": 8}.get(model, 32)
    return TrainConfig(model=model, norm=norm, width=width, depth=1, **dict(TINY, **kw))


@pytest.mark.parametrize("model", list(FITTING))
def test_every_fitting_norm_trains(model, tmp_path):
    if model.startswith(("gpt2", "llama")):
        pytest.importorskip("tiktoken")
        if needs_austen.args[0]:
            pytest.skip(needs_austen.kwargs["reason"])
    elif needs_fashion.args[0]:
        pytest.skip(needs_fashion.kwargs["reason"])
    for norm in FITTING[model]:
        # 24 steps on 64 training images (vision), so that every norm, DyT included, measurably learns
        r = train(tiny(model, norm, steps=24, eval_every=12, lr=5e-3, train_subset=64, batch_size=16), tmp_path / norm)
        assert [h["step"] for h in r["history"]] == [12, 24] and r["final"]["step"] == 24
        assert math.isfinite(r["final"]["val_loss"]) and r["final"]["val_loss"] > 0
        assert bool(r["norms"]["replaced"]) == (norm != "base"), (norm, r["norms"])
        assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"] - 0.03, (norm, r["history"])  # it learns
        assert (tmp_path / norm / "result.json").exists() and not (tmp_path / norm / "ckpt.pt").exists()


def test_norm_that_fits_nothing_is_an_error():
    with pytest.raises(ValueError, match="converts no layer"):
        build_model("resnet-mini", "ib_layer_tanh", width=8)
    with pytest.raises(ValueError, match="base norm"):
        build_model("gpt2-mini", "rmsnorm", width=32, depth=1)


def test_weight_decay_groups_and_schedule():
    model, _ = build_model("vit-mini", "ib_tanh:learnable_strength=true", width=32, depth=1)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and any(p.shape == (1,) for p in no_decay["params"])  # the strengths
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3) and lr_at(55, cfg) < lr_at(20, cfg)


@needs_fashion
def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny("resnet-mini", "base", steps=4, checkpoint_every=2)
    train(cfg, tmp_path)
    with pytest.raises(ValueError, match="different configuration"):
        train(tiny("resnet-mini", "base", steps=5), tmp_path)


def _cmd(out, steps):
    return [sys.executable, "-m", "ibnorm.lab.cli", "train", "--model", "vit-mini", "--norm", "normalnorm",
            "--width", "32", "--depth", "1", "--steps", str(steps), "--batch-size", "16", "--train-subset", "2000",
            "--eval-every", "20", "--eval-examples", "200", "--checkpoint-every", "10", "--no-progress",
            "--threads", "1", "--out", str(out)]


def _result(path):
    return json.loads((Path(path) / "result.json").read_text())


def _metrics(path):
    return [{k: v for k, v in h.items() if k != "elapsed"} for h in _result(path)["history"]]


@needs_fashion
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    """NormalNorm's training noise makes the RNG state part of what must be restored."""
    steps = 200
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cmd(killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "ckpt.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] >= 30:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert 30 <= at_kill < steps and not (killed / "result.json").exists()
    last_checkpoint = torch.load(ckpt, weights_only=False)["step"]
    subprocess.run(_cmd(killed, steps), check=True, capture_output=True)
    subprocess.run(_cmd(clean, steps), check=True, capture_output=True)
    # It continued from the checkpoint (a run that ignored it and started over would record no resume) ...
    assert _result(killed)["resumed_from"] == [last_checkpoint] and _result(clean)["resumed_from"] == []
    # ... and ended exactly where the uninterrupted run did, at every evaluation.
    assert len(_metrics(killed)) == steps // 20 and _metrics(killed) == _metrics(clean)
    assert not ckpt.exists()


@needs_fashion
def test_resume_continues_from_what_the_checkpoint_holds(tmp_path):
    """A checkpoint whose weights were changed gives a different end: resuming really loads the checkpoint."""
    cfg = tiny("resnet-mini", "ib_tanh", steps=6, eval_every=2, checkpoint_every=2)
    for name, perturb in (("plain", False), ("perturbed", True)):
        out = tmp_path / name
        train(dataclasses.replace(cfg, stop_after=2), out)
        if perturb:
            ckpt = torch.load(out / "ckpt.pt", weights_only=False)
            ckpt["model"] = {k: v * 1.5 if v.is_floating_point() and k.endswith("weight") else v
                             for k, v in ckpt["model"].items()}
            torch.save(ckpt, out / "ckpt.pt")
        result = train(cfg, out)
        assert result["resumed_from"] == [2]
    reference = train(cfg, tmp_path / "reference")
    assert _metrics(tmp_path / "plain") == _metrics(tmp_path / "reference") and reference["resumed_from"] == []
    assert _metrics(tmp_path / "perturbed")[-1]["val_loss"] != _metrics(tmp_path / "reference")[-1]["val_loss"]


@needs_fashion
def test_interrupted_sweep_loses_no_finished_run(tmp_path, monkeypatch):
    preset = sweep.GridPreset(("resnet-mini",), ("base", "ib_tanh", "ib_log"), (0,),
                              vision=dict(TINY, width=8, depth=1))
    calls = []
    real_train = sweep.train

    def flaky(cfg, out_dir, **kw):
        if not (Path(out_dir) / "result.json").exists():
            calls.append(cfg.norm)  # a run that really trains
        if cfg.norm == "ib_log" and calls.count("ib_log") == 1:
            raise KeyboardInterrupt  # killed while the third run trains
        return real_train(cfg, out_dir, **kw)

    monkeypatch.setattr(sweep, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_grid("t", preset, tmp_path / "res", tmp_path / "runs", progress=False)
    assert sorted(p.name for p in (tmp_path / "res" / "runs").iterdir()) == ["resnet-mini__base__s0.json", "resnet-mini__ib_tanh__s0.json"]
    results = sweep.run_grid("t", preset, tmp_path / "res", tmp_path / "runs", progress=False)
    assert calls == ["base", "ib_tanh", "ib_log", "ib_log"]  # finished runs were not trained again
    table = summarize(results, tmp_path / "res", "t", "cmd")
    assert "| ib_log |" in table and (tmp_path / "res" / "runs.csv").read_text().count("\n") == 4
    assert (tmp_path / "res" / "curves_resnet-mini.png").stat().st_size > 1000


def test_ablation_grids():
    assert sweep.ablation_norms("order", ["ib_tanh"]) == ["base", "ib_tanh", "ib_tanh:order=standardize_then_compress"]
    assert sweep.ablation_norms("affine", ["ib_log"]) == ["base", "base:affine=0", "ib_log", "ib_log:affine=0"]
    assert "ib_power:strength=1.0" in sweep.ablation_norms("strength", ["ib_power"])
    with pytest.raises(ValueError, match="ablation"):
        sweep.ablation_norms("depth")


@needs_fashion
def test_ablate_cli_runs_and_reports(tmp_path, capsys):
    from ibnorm.lab.cli import main
    rc = main(["ablate", "affine", "--models", "resnet-mini", "--ops", "ib_tanh", "--steps", "2", "--eval-every", "2",
               "--eval-examples", "64", "--train-subset", "128", "--batch-size", "8", "--width", "8",
               "--warmup-steps", "1", "--no-progress", "--results-dir", str(tmp_path / "res"),
               "--runs-dir", str(tmp_path / "runs")])
    assert rc == 0
    out = capsys.readouterr().out
    for norm in ("| base |", "| base:affine=0 |", "| ib_tanh |", "| ib_tanh:affine=0 |"):
        assert norm in out
    runs = json.loads(next((tmp_path / "res" / "runs").glob("*ib_tanh__affine-0*")).read_text())
    assert runs["norms"]["into"] == ["IBBatchNorm2d"]


@needs_fashion
def test_info_during_training_and_ibnorm_info_over_seeds(tmp_path):
    """`--info-every` records during training; `ibnorm info` merges seeds into means, spreads and paired deltas."""
    import csv
    from ibnorm.lab.cli import main
    dirs = []
    for norm in ("base", "ib_tanh"):
        for seed in (0, 1):
            out = tmp_path / f"{norm}-s{seed}"
            train(tiny("vit-mini", norm, seed=seed, steps=4, eval_every=4, info_every=2, info_probe=48), out)
            rows = list(csv.DictReader((out / "info.csv").open()))
            assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]
            assert {(r["model"], r["norm"], r["seed"]) for r in rows} == {("vit-mini", norm, str(seed))}
            dirs.append(str(out))
    assert main(["info", *dirs, "--out", str(tmp_path / "info")]) == 0
    summary = list(csv.DictReader((tmp_path / "info" / "info_summary.csv").open()))
    assert {r["norm"] for r in summary} == {"vit-mini base", "vit-mini ib_tanh"}
    assert all(r["seeds"] == "2" and r["step"] == "4" for r in summary)
    per_seed = {(r["norm"], r["seed"], r["index"]): float(r["IB"]) for r in csv.DictReader((tmp_path / "info" / "info.csv").open())
                if r["step"] == "4"}
    for r in summary:
        if r["norm"] == "vit-mini ib_tanh":  # the paired delta is the mean of per-seed differences
            diffs = [per_seed[("ib_tanh", s, r["index"])] - per_seed[("base", s, r["index"])] for s in ("0", "1")]
            assert float(r["dIB"]) == pytest.approx(sum(diffs) / 2)
            assert r["contraction"] == "" or 0 < float(r["contraction"]) < 1
        else:
            assert r["dIB"] == ""
    md = (tmp_path / "info" / "info_summary.md").read_text()
    assert "| vit-mini ib_tanh | 2 |" in md and "Mean IB over all recorded layers" in md
    for png in ("info_plane.png", "info_layers.png"):
        assert (tmp_path / "info" / png).read_bytes()[:4] == b"\x89PNG"
    # other settings than training recorded with: the final model is analysed apart; info.csv is kept
    recorded = (Path(dirs[0]) / "info.csv").read_bytes()
    assert main(["info", dirs[0], "--beta", "0.5", "--probe", "48", "--out", str(tmp_path / "info2")]) == 0
    assert (Path(dirs[0]) / "info.csv").read_bytes() == recorded
    final = list(csv.DictReader((Path(dirs[0]) / "info-final-renyi-beta0.5-probe48-dim256.csv").open()))
    assert {r["step"] for r in final} == {"4"} and {r["beta"] for r in final} == {"0.5"}


def _fake_result(model, norm, seed, metric):
    kind = "val_acc" if model in ("vit-mini", "resnet-mini") else "val_loss"
    final = {"step": 10, "train_loss": 1.0 + seed, "val_loss": metric if kind == "val_loss" else 0.5,
             kind: metric, "val_ppl": 2.0}
    return {"config": {"model": model, "norm": norm, "seed": seed, "steps": 10}, "final": final,
            "history": [dict(final, step=5), final], "wall_time_s": 1.0,
            "environment": {"threads": 2, "torch": "x"}}


def test_summarize_statistics_against_an_independent_computation(tmp_path):
    """Means, standard deviations and paired deltas of the compare table, over three seeds, recomputed here."""
    import numpy as np
    metrics = {("llama-mini", "base"): [2.0, 2.3, 2.1], ("llama-mini", "ib_tanh"): [1.9, 2.35, 2.0],
               ("resnet-mini", "base"): [0.80, 0.82, 0.81], ("resnet-mini", "ib_log"): [0.79, 0.84, 0.80]}
    results = [_fake_result(m, n, s, v) for (m, n), vals in metrics.items() for s, v in enumerate(vals)]
    table = summarize(results, tmp_path, "t", "cmd")
    for (model, norm), vals in metrics.items():
        mean, sd = np.mean(vals), np.std(vals, ddof=1)
        base = np.array(metrics[(model, "base")])
        row = next(line for line in table.splitlines() if line.startswith(f"| {norm} |") and
                   f"{mean:.4f} ± {sd:.4f}" in line)
        if norm != "base":
            d = np.array(vals) - base
            assert f"{d.mean():.4f} ± {d.std(ddof=1):.4f}" in row, (row, d)
        else:
            assert "| — |" in row
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("model,norm,seed,") and len(rows) == 1 + len(results)


@needs_fashion
def test_compare_command_over_seeds(tmp_path, capsys):
    """`ibnorm compare` end to end: every (model, norm, seed) trains once and the table's paired delta is the mean of
    the per-seed differences recorded in runs.csv."""
    import csv
    import statistics
    from ibnorm.lab.cli import main
    args = ["compare", "--models", "resnet-mini", "--norms", "base,ib_tanh", "--seeds", "0,1", "--steps", "2",
            "--eval-every", "2", "--eval-examples", "64", "--train-subset", "128", "--batch-size", "8", "--width", "8",
            "--warmup-steps", "1", "--no-progress", "--results-dir", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    runs = list(csv.DictReader((tmp_path / "res" / "runs.csv").open()))
    assert sorted((r["norm"], r["seed"]) for r in runs) == [("base", "0"), ("base", "1"), ("ib_tanh", "0"), ("ib_tanh", "1")]
    acc = {(r["norm"], r["seed"]): float(r["val_acc"]) for r in runs}
    delta = statistics.fmean(acc[("ib_tanh", s)] - acc[("base", s)] for s in ("0", "1"))
    table = (tmp_path / "res" / "table.md").read_text()
    assert f"| ib_tanh | {statistics.fmean([acc[('ib_tanh', '0')], acc[('ib_tanh', '1')]]):.4f}" in table
    assert f"{delta:.4f}" in table.split("| ib_tanh |")[1].splitlines()[0]


@needs_fashion
def test_cpu_time_adds_up_over_a_resume(tmp_path):
    """A result's cpu_time_s is this run's process CPU time, carried through checkpoints; a checkpoint written before
    it was kept leaves it unknown (None) rather than undercounted."""
    cfg = tiny("resnet-mini", "ib_tanh", steps=6, eval_every=2, checkpoint_every=2)
    whole = train(cfg, tmp_path / "whole")
    assert 0 < whole["cpu_time_s"] < 600
    out = tmp_path / "resumed"
    train(dataclasses.replace(cfg, stop_after=2), out)
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    ckpt["cpu_elapsed"] = 1000.0  # as if the first part had taken that long
    torch.save(ckpt, out / "ckpt.pt")
    assert train(cfg, out)["cpu_time_s"] > 1000.0
    old = tmp_path / "old"
    train(dataclasses.replace(cfg, stop_after=2), old)
    ckpt = torch.load(old / "ckpt.pt", weights_only=False)
    del ckpt["cpu_elapsed"]
    torch.save(ckpt, old / "ckpt.pt")
    assert train(cfg, old)["cpu_time_s"] is None


@needs_fashion
def test_posthoc_records_the_score_at_conversion_and_recalibrates_batch_norms(tmp_path):
    """A post-hoc run records what the converted model scores before fine-tuning; recalibrating recomputes the
    batch norms' running statistics (as a plain average) and nothing else changes in how the run trains."""
    from ibnorm.lab.train import TrainConfig, train, recalibrate_batch_norms, load_trained
    small = dict(batch_size=16, eval_every=4, eval_examples=64, train_subset=256, dataset="fashion-mnist",
                warmup_steps=1, progress=False)
    parent = train(TrainConfig(model="resnet-mini", norm="base", steps=4, lr=1e-2, **small), tmp_path / "parent")
    assert "at_start" not in parent
    weights = str(tmp_path / "parent" / "model.pt")
    plain = train(TrainConfig(model="resnet-mini", norm="ib_tanh:strength=0.5", steps=4, lr=1e-2, init_from=weights,
                              **small), tmp_path / "plain")
    assert set(plain["at_start"]) >= {"val_acc", "val_loss"} and plain["at_start"] != plain["final"]
    model, task = load_trained(TrainConfig(model="resnet-mini", norm="base", **small), tmp_path / "parent")
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    recalibrate_batch_norms(model, task, 3)
    assert not torch.equal(before, bn.running_mean) and int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1
    recal = train(TrainConfig(model="resnet-mini", norm="ib_tanh:strength=0.5", steps=4, lr=1e-2, init_from=weights,
                              recalibrate_bn=3, **small), tmp_path / "recal")
    assert recal["at_start"] != plain["at_start"]


@needs_austen
def test_a_run_is_bit_identical_in_two_fresh_processes(tmp_path):
    """Two fresh processes train the same config to bit-identical curves, metrics and weights: nothing but the
    config (and the machine) decides a run's numbers."""
    code = ("import sys; from ibnorm.lab.train import TrainConfig, train; "
            "train(TrainConfig(model='llama-mini', norm='ib_tanh', steps=6, lr=3e-3, batch_size=4, context=32, "
            "eval_every=3, eval_batches=2, warmup_steps=2, threads=1, progress=False), sys.argv[1])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, timeout=300)
    a, b = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("a", "b"))
    assert a["curve"] == b["curve"] and a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]
    wa, wb = (torch.load(tmp_path / n / "model.pt") for n in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["environment"]["kernel"] == "cpp" and a["environment"]["cpu_model"]  # what decides it is recorded
