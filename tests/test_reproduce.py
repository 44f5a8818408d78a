"""The reproduction: its plan, its runner, its report, and the committed results it rebuilds byte for byte."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ibnorm.lab import reproduce as R
from ibnorm.lab import results as RS
from ibnorm.lab import train as T
from ibnorm.ops import COMPRESSIONS
from test_data import needs_austen

REPO = Path(__file__).resolve().parents[1]
TINY_VISION = dict(batch_size=16, eval_every=6, eval_examples=64, train_subset=256, dataset="fashion-mnist",
                   warmup_steps=2, weight_decay=0.05)


def _needs_data():
    from ibnorm.lab import data as D
    try:
        D.load_fashion_mnist("test")
    except D.DatasetMissingError as e:
        pytest.skip(f"[data] {e}")


@pytest.fixture
def tiny_protocol(monkeypatch):
    """One tiny vision family, two rates, two seeds: the whole plan in seconds."""
    monkeypatch.setattr(R, "FAMILIES", {"resnet-mini": R.Family("resnet-mini", 12, 6, TINY_VISION,
                                                                dict(holdout=300), 12, (1e-3, 3e-2))})
    monkeypatch.setattr(R, "VISION_FAMILIES", ("resnet-mini",))
    monkeypatch.setattr(R, "LM_FAMILIES", ())
    monkeypatch.setattr(R, "ABLATION_MODELS", ())
    monkeypatch.setattr(R, "SEEDS", (0, 1))
    monkeypatch.setattr(R, "MAIN_SEEDS", (0, 1))
    monkeypatch.setattr(R, "MAIN_NORMS", ("base", "ib_tanh"))
    monkeypatch.setattr(R, "LR_MIN", 1e-3)  # the grid's own ends: no extension, no stability ladder
    monkeypatch.setattr(R, "LR_MAX", 3e-2)
    monkeypatch.setattr(R, "STABILITY_NORMS", ())
    monkeypatch.setattr(R, "INFO_NORMS", ("base", "ib_tanh"))
    monkeypatch.setattr(R, "GENERALIZATION_NORMS", ("base",))
    monkeypatch.setattr(R, "LEARNABLE_NORMS", ())


def test_plan_unlocks_seeds_at_the_rate_tuning_chose(tmp_path, tiny_protocol):
    _needs_data()
    results = tmp_path / "results"
    todo, waiting = R.pending(results)
    assert {j.stage for j in todo} == {"tune"} and len(todo) == 4  # 2 norms x 2 rates
    assert waiting > 0
    assert all(j.config.holdout == 300 and j.config.seed == R.TUNE_SEED for j in todo)

    made = R.reproduce(results, tmp_path / "runs", jobs=1, stages=["tune", "main"], log=lambda s: None)
    assert made == 4 + 2 * 2  # the tuning runs, then both norms' seeds at their chosen rates
    for norm in ("base", "ib_tanh"):
        tuned = {lr: json.loads((results / "reproduction" / "runs" / f"tune__lr{lr:g}__resnet-mini__{norm}__s100.json")
                                .read_text()) for lr in R.FAMILIES["resnet-mini"].lr_grid}
        best = max(R.FAMILIES["resnet-mini"].lr_grid, key=lambda lr: (tuned[lr]["final"]["val_acc"], -lr))
        for seed in R.SEEDS:
            main = json.loads((results / "reproduction" / "runs" / f"main__resnet-mini__{norm}__s{seed}.json").read_text())
            assert main["config"]["lr"] == best and main["config"]["holdout"] == 0 and main["config"]["eval_examples"] == 64
            assert main["curve"] and main["curve"][-1][0] == 12  # the training curve, every 10 steps and the last
    # Committed results are skipped: a second pass trains nothing of these stages.
    assert R.reproduce(results, tmp_path / "runs", jobs=1, stages=["tune", "main"], log=lambda s: None) == 0


def test_info_stage_and_report_from_run_files(tmp_path, tiny_protocol, monkeypatch):
    _needs_data()
    results = tmp_path / "results"
    R.reproduce(results, tmp_path / "runs", jobs=1, stages=["tune", "main", "info"], log=lambda s: None)
    info = json.loads((results / "info" / "runs" / "info__resnet-mini__ib_tanh__s0.json").read_text())
    layers = [r for r in info["rows"] if r["layer"] != "penultimate"]
    assert layers and all(r["contraction"] is not None and 0 < r["contraction"] < 1 for r in layers)  # tanh contracts
    assert info["rows"][-1]["layer"] == "penultimate" and info["rows"][-1]["I_TY_probe"] >= 0

    # The models analysed are the main table's own, and their weights are kept beside the results: a fresh machine
    # (no runs folder) analyses them again without training anything, to the same numbers.
    kept = sorted(p.name for p in (results / "reproduction" / "weights").iterdir())
    assert kept == [f"main__resnet-mini__{n}__s{s}.pt" for n in ("base", "ib_tanh") for s in (0, 1)]
    shutil.rmtree(tmp_path / "runs")
    (results / "info" / "runs" / "info__resnet-mini__ib_tanh__s0.json").unlink()

    def no_training(*a, **k):
        raise AssertionError("trained a run whose weights are committed")
    monkeypatch.setattr(T, "train", no_training)
    assert R.reproduce(results, tmp_path / "runs", jobs=1, stages=["tune", "main", "info"], log=lambda s: None) == 1
    again = json.loads((results / "info" / "runs" / "info__resnet-mini__ib_tanh__s0.json").read_text())
    assert again["rows"] == info["rows"]

    page = RS.build_report(results, tmp_path / "RESULTS.md")
    assert "### resnet-mini" in page and "## Information (claim 2; exploratory)" in page
    first = {p: p.read_bytes() for p in [tmp_path / "RESULTS.md", *results.glob("*/runs.csv")]}
    RS.build_report(results, tmp_path / "RESULTS.md")  # deterministic: the same bytes again
    assert {p: p.read_bytes() for p in first} == first


def test_a_rate_where_the_run_diverged_is_never_chosen():
    ok = lambda acc, lr: {"config": {"model": "vit-mini", "lr": lr}, "final": {"val_acc": acc}}
    diverged = {"config": {"model": "vit-mini", "lr": 1e-2}, "diverged_at": 40}
    assert R.chosen_lr_from({1e-3: ok(0.80, 1e-3), 3e-3: ok(0.85, 3e-3), 1e-2: diverged}) == 3e-3
    assert R.chosen_lr_from({1e-3: ok(0.85, 1e-3), 3e-3: ok(0.85, 3e-3), 1e-2: diverged}) == 1e-3  # tie: lower
    assert R.chosen_lr_from({1e-3: ok(0.8, 1e-3), 3e-3: None, 1e-2: diverged}) is None  # not all in yet
    assert math.isnan(R.chosen_lr_from({1e-3: diverged, 3e-3: diverged}))
    lm = lambda loss, lr: {"config": {"model": "gpt2-mini", "lr": lr}, "final": {"val_loss": loss}}
    assert R.chosen_lr_from({1e-3: lm(1.6, 1e-3), 3e-3: lm(1.5, 3e-3)}) == 3e-3  # LMs: lower loss wins


def test_largest_loss_rise():
    flat = [[10 * (i + 1), 2.0 - 0.01 * i] for i in range(30)]
    assert RS.max_loss_rise(flat) == 0.0
    spiked = [list(p) for p in flat]
    spiked[20][1] += 0.5  # 0.5 above its own trend, 0.49 above the point before it (the lowest before it)
    assert RS.max_loss_rise(spiked) == pytest.approx(0.49)
    drift = [[10 * (i + 1), 1.0 + 0.01 * i] for i in range(30)]  # a slow rise: 0.01 per point
    assert RS.max_loss_rise(drift) == pytest.approx(0.10)  # the window is the preceding 10 points, not the whole run


def test_holdout_never_loads_the_test_set(monkeypatch):
    import numpy as np
    from ibnorm.lab import data as D
    loaded = []

    def fake(split):
        loaded.append(split)
        return np.arange(1000 * 784, dtype=np.uint8).reshape(1000, 28, 28) % 255, np.arange(1000) % 10

    monkeypatch.setitem(D.VISION_DATASETS, "fashion-mnist", fake)
    v = D.vision_data("fashion-mnist", holdout=200)
    assert loaded == ["train"] and len(v.test_y) == 200 and len(v.train_y) == 800
    w = D.vision_data("fashion-mnist", holdout=200)
    assert torch.equal(v.test_x, w.test_x)  # a fixed selection
    with pytest.raises(ValueError, match="holdout"):
        D.vision_data("fashion-mnist", holdout=1000)


def test_tiled_validation_scores_each_token_once():
    from ibnorm.lab import data as D
    stream = torch.arange(1000)
    batches = D.tiled_batches(stream, batch_size=4, context=10, batches=3)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.shape == (12, 10) and torch.equal(xs.flatten(), torch.arange(120))  # consecutive, no overlap
    assert torch.equal(ys, xs + 1)  # next-token targets
    with pytest.raises(ValueError, match="eval_batches"):
        D.tiled_batches(stream, batch_size=4, context=100, batches=3)


def test_carved_text_holdout_is_the_end_of_the_training_text():
    from ibnorm.lab import data as D
    text = D.TextData(torch.arange(100), torch.arange(100, 120), 256)
    carved = D.carve_holdout(text, 30)
    assert torch.equal(carved.train, torch.arange(70)) and torch.equal(carved.val, torch.arange(70, 100))


# ---- the committed reproduction -------------------------------------------------------------------------------

def _committed_run_files() -> list[Path]:
    """The run files git tracks (a sweep running beside a checkout adds untracked ones), or all in a plain copy."""
    import subprocess
    try:
        out = subprocess.run(["git", "ls-files", "results/*/runs/*.json", "results/*/weights/*.json"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted((REPO / "results").glob("*/runs/*.json")) + sorted((REPO / "results").glob("*/weights/*.json"))
    return [REPO / f for f in out]


def test_report_rebuilds_the_committed_results_byte_for_byte(tmp_path):
    """`ibnorm report` on the committed run files gives the committed RESULTS.md and every runs.csv."""
    committed = [REPO / "results" / area for area in RS.AREAS if (REPO / "results" / area / "runs").is_dir()]
    if not committed or not (REPO / "RESULTS.md").exists():
        pytest.fail("RESULTS.md and results/*/runs/ must be committed")
    quoted = [REPO / "results" / RS.DYT_DIAGNOSIS]  # committed evidence the report quotes
    quoted += sorted((REPO / "results" / "reproducibility").glob("*.json"))
    quoted += sorted((REPO / "results" / "confirmatory").glob("PREREGISTRATION*.md"))
    for f in _committed_run_files() + [q for q in quoted if q.exists()]:
        (tmp_path / f.relative_to(REPO).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / f.relative_to(REPO))
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    RS.build_report(tmp_path / "results", tmp_path / "RESULTS.md", readme=tmp_path / "README.md")
    assert (tmp_path / "RESULTS.md").read_text() == (REPO / "RESULTS.md").read_text(), \
        "RESULTS.md differs from what `ibnorm report` makes of the committed run files: run `ibnorm report`"
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text(), \
        "README.md's verdict differs from what `ibnorm report` makes of the committed run files: run `ibnorm report`"
    for area_dir in committed:
        if (area_dir / "runs.csv").exists():
            assert (tmp_path / "results" / area_dir.name / "runs.csv").read_bytes() == (area_dir / "runs.csv").read_bytes(), area_dir.name


def _decision(model, mean, p_adjusted, verdict):
    from ibnorm.lab.results.decisive import Decision
    from ibnorm.lab.stats import Paired
    interval = Paired(n=8, mean=mean, sd=0.001, low=mean - 0.001, high=mean + 0.001, confidence=0.95)
    return Decision(interval, interval, p_adjusted, p_adjusted, 0.001, 8, RS.decisive.bound_of(model), verdict)


def test_the_readme_verdict_follows_the_decisions_and_touches_nothing_else(tmp_path):
    """The README's verdict paragraph is the claim-1 verdict and the decisions in words (each family's configuration,
    effect in its unit and Holm p; only the main table's significant ops), rewritten between its markers alone."""
    from ibnorm.lab.results.readme import END, START
    confirm = {("vit-mini", "ib_tanh:strength=2.0"): _decision("vit-mini", 0.015, 1e-4, "better"),
               ("resnet-mini", "ib_log"): _decision("resnet-mini", -0.002, 0.242, "equivalent")}
    main = {("resnet-mini", "ib_tanh"): _decision("resnet-mini", -0.0046, 0.029, "worse"),
            ("gpt2-mini", "ib_log"): _decision("gpt2-mini", -0.004, 1.0, "inconclusive"),
            ("gpt2-mini", "dyt"): _decision("gpt2-mini", 1.46, 1e-4, "worse")}  # a peer: not one of the ops
    text = " ".join(RS.verdict_paragraph("not supported", main, confirm, complete=False).split())
    assert "claim 1, that IBNorm outperforms the base norm on every family, is **not supported**" in text
    assert ("better on vit-mini (`ib_tanh:strength=2.0`, +1.5 accuracy points, Holm p 1e-04); equivalent on "
            "resnet-mini (`ib_log`, -0.2 accuracy points, Holm p 0.242)") in text
    assert ("Holm over its 2 op × family comparisons): resnet-mini ib_tanh worse (-0.5 accuracy points, p 0.029); the "
            "other 1 is equivalent or inconclusive.") in text
    assert "dyt" not in text and "still running" in text
    assert "Every planned run is in" in RS.verdict_paragraph("supported", {}, {}, complete=True)
    assert all(len(line) <= 118 for line in RS.verdict_paragraph("not supported", main, confirm, False).splitlines())

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nold words\n{END}\n\nthe rest\n")
    assert RS.write_verdict(readme, "new words") is True
    assert readme.read_text() == f"# title\n\n{START}\nnew words\n{END}\n\nthe rest\n"
    assert RS.write_verdict(readme, "new words") is False  # unchanged: not rewritten
    readme.write_text("# no block\n")
    with pytest.raises(ValueError, match="README.md has no verdict block"):
        RS.write_verdict(readme, "words")


def test_report_rewrites_a_readme_by_default_only_where_it_has_the_verdict_block(tmp_path, monkeypatch, capsys):
    """In ibnorm's checkout (README with the markers) `ibnorm report` keeps the verdict current; in a user's own
    folder, whose README has no block, it leaves that README alone instead of refusing to report."""
    from ibnorm.lab.cli import main
    from ibnorm.lab.results.readme import END, START
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text("# my project\n")
    assert main(["report"]) == 0
    assert (tmp_path / "README.md").read_text() == "# my project\n" and (tmp_path / "RESULTS.md").exists()
    (tmp_path / "README.md").write_text(f"# ibnorm\n{START}\nold\n{END}\n")
    assert main(["report"]) == 0
    assert "**Today's verdict**" in (tmp_path / "README.md").read_text() and "the verdict in README.md" in capsys.readouterr().err
    (tmp_path / "README.md").write_text(f"# ibnorm\n{START}\nold\n{END}\n")
    assert main(["report", "--no-readme"]) == 0
    assert "old" in (tmp_path / "README.md").read_text()


def test_committed_runs_follow_the_protocol():
    """Every committed result, a retrained parent's included, is a run the current plan asks for, with the protocol's
    configuration."""
    results = REPO / "results"
    jobs = R.planned_jobs(results, provisional=True)[0]  # runs at a rate whose grid is still being extended count
    planned = {j.result_path(results): j for j in jobs}
    planned.update({R.retrained_result_path(j, results): j for j in jobs if R.keeps_weights(j)})  # parents again
    files = [f for f in _committed_run_files() if f.parent.parent.name in RS.AREAS]
    assert files, "no committed reproduction run"
    for f in files:
        job = planned.get(f)
        assert job is not None, f"{f.name} is not a run of the current protocol"
        saved = vars(T.TrainConfig(**json.loads(f.read_text())["config"]).resolved())  # None: the default
        want = {k: v for k, v in vars(job.config.resolved()).items() if k not in ("init_from", "progress", "threads", "checkpoint_every")}
        assert {k: saved.get(k) for k in want} == want, f.name


def test_result_records_learned_strength_and_curve(tmp_path):
    _needs_data()
    from ibnorm.lab.train import TrainConfig, train
    cfg = TrainConfig(model="resnet-mini", norm="ib_tanh:learnable_strength=1,strength=0.3", steps=12, lr=5e-2,
                      curve_every=5, progress=False, **TINY_VISION)
    r = train(cfg, tmp_path / "run")
    learned = r["learned_strength"]
    assert len(learned) == 9 and all(0.0 < v for v in learned.values())  # every BatchNorm of the ResNet
    assert any(abs(v - 0.3) > 1e-4 for v in learned.values())  # it moved from where it started
    state = torch.load(tmp_path / "run" / "model.pt")
    from ibnorm.ops import raw_to_strength
    for name, v in learned.items():
        assert v == pytest.approx(float(raw_to_strength("tanh", state[f"{name}.strength_raw"])))
    assert [s for s, _ in r["curve"]] == [5, 10, 12]  # every curve_every steps and the last


@pytest.mark.parametrize("argv, names", [(["reproduce", "--stages", "tune,bogus"], "--stages"),
                                         (["reproduce", "--models", "bert-mini"], "--models"),
                                         (["reproduce", "--jobs", "0"], "--jobs"),
                                         (["report", "--results-dir", "/no/such/folder"], "--results-dir"),
                                         (["report", "--results-dir", str(REPO / "results"), "--readme",
                                           "/no/such/README.md"], "--readme"),
                                         (["report", "--results-dir", str(REPO / "results"), "--readme",
                                           str(REPO / "pyproject.toml")], "--readme"),  # no verdict block
                                         (["report", "--readme", "README.md", "--no-readme"], "--no-readme")])
def test_bad_reproduce_arguments_exit_2_with_one_line(argv, names, capsys):
    from ibnorm.lab.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and names in err


def test_dry_run_lists_the_pending_runs(tmp_path, capsys):
    from ibnorm.lab.cli import main
    assert main(["reproduce", "--dry-run", "--results-dir", str(tmp_path), "--models", "vit-mini"]) == 0
    out = capsys.readouterr()
    listed = out.out.split()
    assert len(listed) == len(R.MAIN_NORMS) * len(R.FAMILIES["vit-mini"].lr_grid) and all(x.startswith("reproduction/tune__") for x in listed)
    assert "wait on an earlier result" in out.err and "projected single-thread hours: tune" in out.err


def test_a_norm_flat_over_the_rate_grid_is_named_in_the_tuning_section():
    """A norm whose score does not move with the rate (DyT's LMs stall at the byte-frequency loss) is named, with
    the DyT caveat; one that responds to the rate is not."""
    def run(norm, lr, loss):
        return {"stage": "tune", "config": {"model": "gpt2-mini", "norm": norm, "lr": lr, "seed": R.TUNE_SEED},
                "final": {"val_loss": loss}, "curve": [[10, 5.0], [20, loss]]}
    grid = R.FAMILIES["gpt2-mini"].lr_grid
    runs = [run("dyt", lr, 3.0842 + 0.0004 * i) for i, lr in enumerate(grid)]
    runs += [run("base", lr, 2.2 - 0.15 * i) for i, lr in enumerate(grid)]
    text = "\n".join(RS.tuning_section(runs))
    assert "The same score at every rate of the grid (within 0.005): gpt2-mini dyt (3.0842-3.0850)." in text
    flat_line = next(line for line in text.splitlines() if line.startswith("The same score"))
    assert "base" not in flat_line and "\n\nDyT and Derf run at their default" in text  # a paragraph of its own
    runs[0] = run("dyt", grid[0], 3.2)  # one rate differs: no longer flat
    assert "The same score at every rate" not in "\n".join(RS.tuning_section(runs))


def test_an_lm_no_better_than_the_byte_frequencies_is_named_even_when_its_grid_is_not_flat(tmp_path):
    """DyT's extended LM grid moves with the rate (3.0997 at the lowest) but never beats the byte-frequency level
    by more than the margin: it is named as stalled, with the caveat; a norm that learns is not."""
    def run(norm, lr, loss):
        return {"stage": "tune", "config": {"model": "gpt2-mini", "norm": norm, "lr": lr, "seed": R.TUNE_SEED},
                "final": {"val_loss": loss}, "curve": [[10, 5.0], [20, loss]]}
    grid = R.FAMILIES["gpt2-mini"].lr_grid
    runs = [run("dyt", 1e-4, 3.0997)] + [run("dyt", lr, 3.0841 + 0.0004 * i) for i, lr in enumerate(grid)]
    runs += [run("base", lr, 2.2 - 0.15 * i) for i, lr in enumerate(grid)]
    (tmp_path / RS.DYT_DIAGNOSIS).parent.mkdir(parents=True)
    (tmp_path / RS.DYT_DIAGNOSIS).write_text(json.dumps({"byte_frequency_level": {"gpt2-mini": {"tune": 3.0837,
                                                                                              "main": 3.0913}}}))
    text = "\n".join(RS.tuning_section(runs, tmp_path))
    stalled = next(line for line in text.splitlines() if line.startswith("No better than the bytes' frequencies"))
    assert "gpt2-mini 3.0837" in stalled and "gpt2-mini dyt (best 3.0841)" in stalled and "base" not in stalled
    assert "The same score at every rate" not in text  # 3.0997 at 1e-4: not flat
    assert "initialized to √width" in text  # the authors' LLM recipe, which the protocol does not use
    assert "No better than" not in "\n".join(RS.tuning_section(runs))  # no committed level, no claim


def test_the_dyt_caveat_quotes_the_committed_diagnosis(tmp_path):
    """With a diagnosis file, the DyT caveat gives its numbers; without one it says nothing of it."""
    def run(lr, loss):
        return {"stage": "tune", "config": {"model": "llama-mini", "norm": "dyt", "lr": lr, "seed": R.TUNE_SEED},
                "final": {"val_loss": loss}, "curve": [[10, 5.0], [20, loss]]}
    runs = [run(lr, 3.0842) for lr in R.FAMILIES["llama-mini"].lr_grid]
    assert "Why DyT" not in "\n".join(RS.tuning_section(runs, tmp_path))

    def records(loss, saturated, shared):
        return [{"step": 0, "train_loss": 5.5, "shared_rms": 0.005, "varying_rms": 0.02, "saturated": 0.0 if saturated is not None else None, "alpha": None},
                {"step": 25, "train_loss": loss, "shared_rms": shared, "varying_rms": 0.3, "saturated": saturated, "alpha": None}]
    diagnosis = {"steps": 26, "lr": 0.003, "seed": 100, "runs": {
        "llama-mini / base": records(1.716, None, 2.9), "llama-mini / dyt": records(3.086, 1.0, 348.0),
        "llama-mini / dyt, final norm kept": records(2.257, None, 18.0)}}
    (tmp_path / RS.DYT_DIAGNOSIS).parent.mkdir(parents=True)
    (tmp_path / RS.DYT_DIAGNOSIS).write_text(json.dumps(diagnosis))
    text = "\n".join(RS.tuning_section(runs, tmp_path))
    assert "saturated by step 25" in text
    assert ("llama-mini: shared 348 against varying 0.3, 100% saturated, training loss 3.086; with the final norm "
            "kept 2.257; base norm 1.716.") in text
    assert "authors' LLM recipe" not in text  # no recipe run, no sentence about it

    diagnosis["runs"]["llama-mini / dyt, authors' LLM recipe"] = records(3.09, 1.0, 400.0)
    diagnosis["recipe"] = {"alpha_0": {"attention": 0.7, "mlp": 0.15, "final": 0.15}, "embedding_scale": "√width"}
    (tmp_path / RS.DYT_DIAGNOSIS).write_text(json.dumps(diagnosis))
    text = "\n".join(RS.tuning_section(runs, tmp_path))
    # the recipe as recorded (not a copy of today's values), then its numbers beside the others
    assert ("DyT with its authors' LLM recipe (α₀ 0.7 before attention, 0.15 before the MLP and at the final norm, "
            "the embeddings times a learnable √width) saturates the same way at this rate.") in text
    assert "with the authors' LLM recipe 3.090 (100% saturated)" in text


def test_posthoc_runs_sharing_a_parent_never_train_it_twice_at_once(tmp_path):
    """The post-hoc runs of one seed share a parent: while one of them trains it (no committed weights), the others
    wait and a run of another seed takes the free slot; once the weights are committed, they all may run."""
    def posthoc(norm, seed):
        cfg = R._config("llama-mini", norm, seed, 10, 1e-3)
        return R.Job("posthoc", cfg, needs=R.Job("main", R._config("llama-mini", "base", seed, 20, 1e-3)))
    a0, b0, c0, a1 = posthoc("base", 0), posthoc("ib_tanh", 0), posthoc("ib_log", 0), posthoc("base", 1)
    todo = [a0, b0, c0, a1]
    assert R.keeps_weights(a0.needs)  # every family's base model is kept for post-hoc conversion
    assert R.startable(todo, [], 2, tmp_path) == [a0, a1]
    assert R.startable(todo, [a0], 1, tmp_path) == [a1]
    assert R.startable(todo, [a0, a1], 2, tmp_path) == []
    weights = a0.needs.weights_path(tmp_path)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert R.startable(todo, [a0], 2, tmp_path) == [b0, c0]
    assert R.startable(todo, [], 0, tmp_path) == []


def test_late_stages_run_in_two_processes_and_reach_the_report(tmp_path, tiny_protocol, monkeypatch):
    """Ablation, learnable strength and post-hoc conversion, end to end with --jobs 2 as the sweep runs them. The
    post-hoc parents' weights are absent (as for the LMs, whose main-table weights were not kept): each is trained
    again once, kept, and converted; the fine-tuned runs name their parent and take the protocol's budget and rate."""
    _needs_data()
    monkeypatch.setattr(R, "ABLATION_MODELS", ("resnet-mini",))
    monkeypatch.setattr(R, "ABLATION_NORMS", {"reference": ["ib_tanh"], "strength": ["ib_tanh:strength=0.1"],
                                                "order": ["ib_tanh:order=standardize_then_compress"]})
    monkeypatch.setattr(R, "LEARNABLE_NORMS", ("ib_tanh:learnable_strength=1",))
    results, runs = tmp_path / "results", tmp_path / "runs"
    R.reproduce(results, runs, jobs=1, stages=["tune", "main"], log=lambda s: None)
    shutil.rmtree(results / "reproduction" / "weights")
    shutil.rmtree(runs)
    late = ["ablation", "learnable", "posthoc"]
    made = R.reproduce(results, runs, jobs=2, stages=late, log=lambda s: None)
    assert made == 3 * 2 + 2 + (len(R.POSTHOC_NORMS) + len(R.POSTHOC_AWAY)) * 2 and not R.pending(results, late)[0]
    base_lr = R.chosen_lr(results, "resnet-mini", "base")
    for seed in R.SEEDS:
        parent = f"main__resnet-mini__base__s{seed}"
        assert (results / "reproduction" / "weights" / f"{parent}.pt").exists()
        again = json.loads((results / "reproduction" / "weights" / f"{parent}.json").read_text())  # what it scores
        assert again["config"]["seed"] == seed and again["config"]["norm"] == "base" and "final" in again
        for norm in R.POSTHOC_NORMS:
            r = json.loads((results / "reproduction" / "runs" / f"posthoc__resnet-mini__{R.slug(norm)}__s{seed}.json").read_text())
            assert r["config"]["init_from"] == parent and r["config"]["steps"] == int(12 * R.POSTHOC_FRACTION)
            assert r["config"]["lr"] == pytest.approx(base_lr * R.POSTHOC_LR_SCALE) and "final" in r
    page = RS.build_report(results, tmp_path / "RESULTS.md")
    rows = {"## Ablations (claim 5)": "| ib_tanh:order=standardize_then_compress | 2 |",
            "## Learnable strength": "| ib_tanh:learnable_strength=1 |",
            "## Post-hoc conversion of a trained model": f"| resnet-mini | {R.POSTHOC_NORMS[1]} | 2 |"}
    for title, row in rows.items():
        assert row in page.split(title)[1].split("\n## ")[0], title
    assert "![strength ablation](results/ablations/strength.png)" in page
    assert (results / "ablations" / "strength.png").stat().st_size > 0


@needs_austen
def test_dyt_diagnosis_script_records_the_final_norms_input(tmp_path):
    """scripts/diagnose_dyt_lm.py trains each variant and writes the records the report quotes."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import diagnose_dyt_lm
    finally:
        sys.path.pop(0)
    out = tmp_path / "diag"
    diagnose_dyt_lm.main(["--steps", "2", "--models", "llama-mini", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert set(saved["runs"]) == {f"llama-mini / {v}" for v in diagnose_dyt_lm.VARIANTS}
    dyt, kept = saved["runs"]["llama-mini / dyt"], saved["runs"]["llama-mini / dyt, final norm kept"]
    assert [r["step"] for r in dyt] == [0, 1]
    assert dyt[0]["alpha"] == 0.5 and 0 <= dyt[0]["saturated"] <= 1 and dyt[0]["shared_rms"] > 0
    assert saved["cpu_time_s"] > 0  # measured, not estimated
    assert f"took {saved['cpu_time_s'] / 60:.1f} CPU-minutes, measured" in out.with_suffix(".md").read_text()
    assert kept[0]["alpha"] is None  # the final norm really is the base norm there
    recipe = saved["runs"]["llama-mini / dyt, authors' LLM recipe"]
    assert recipe[0]["alpha"] == pytest.approx(0.2)  # the recipe's final-norm alpha_0, not the default 0.5
    assert saved["recipe"]["alpha_0"] == diagnose_dyt_lm.RECIPE_ALPHA  # the report quotes what ran
    assert "alpha_0" not in out.with_suffix(".md").read_text()  # the summary words it from the same record
    assert "α₀ 0.8 before attention, 0.2 before the MLP and at the final norm" in out.with_suffix(".md").read_text()
    assert recipe[0]["shared_rms"] > 5 * dyt[0]["shared_rms"]  # the embeddings scaled by sqrt(width) at the start
    level = saved["byte_frequency_level"]["llama-mini"]
    assert 2.5 < level["tune"] < 4.0 and 2.5 < level["main"] < 4.0  # finite: add-one counts
    assert "| llama-mini | dyt | 1 |" in out.with_suffix(".md").read_text()


def test_default_strength_rule_on_constructed_cases():
    """A strength replaces an op's default only when it beats the default beyond its interval in every ablation
    model; while any comparison is missing the rule gives None."""
    from ibnorm.lab.stats import Paired
    p = Paired(n=3, mean=0.01, sd=0.001, low=0.005, high=0.015, confidence=0.95)
    big = Paired(n=3, mean=0.03, sd=0.001, low=0.02, high=0.04, confidence=0.95)
    strengths = [v for v in R.STRENGTHS["ib_tanh"] if v != 0.5]
    neutral = {(m, f"ib_tanh:strength={v}"): (p, "no detectable difference") for m in R.ABLATION_MODELS for v in strengths}
    assert RS.evidenced_default("ib_tanh", neutral) == 0.5
    del neutral[(R.ABLATION_MODELS[0], f"ib_tanh:strength={strengths[0]}")]
    assert RS.evidenced_default("ib_tanh", neutral) is None
    cases = {(m, f"ib_tanh:strength={v}"): (p, "no detectable difference") for m in R.ABLATION_MODELS for v in strengths}
    cases[(R.ABLATION_MODELS[0], f"ib_tanh:strength={strengths[0]}")] = (p, "better")  # one model only: kept
    assert RS.evidenced_default("ib_tanh", cases) == 0.5
    for m in R.ABLATION_MODELS:
        cases[(m, f"ib_tanh:strength={strengths[0]}")] = (p, "better")
        cases[(m, f"ib_tanh:strength={strengths[1]}")] = (big, "better")
    assert RS.evidenced_default("ib_tanh", cases) == strengths[1]  # the larger gain of the two that qualify


def test_library_default_strengths_follow_the_committed_ablations():
    """When the committed strength ablation is complete, each op's library default is the one its rule supports."""
    from ibnorm.ops import COMPRESSIONS
    runs = RS.load_runs(REPO / "results")["ablations"]
    _, comparisons = RS.ablation_section(runs)
    for op in R.IB_OPS:
        supported = RS.evidenced_default(op, comparisons)
        if supported is not None:
            assert COMPRESSIONS[op.removeprefix("ib_")].default == supported, \
                f"the committed ablations support strength {supported} for {op}: change its default (and say why)"


def test_learnable_strength_rows_compare_to_the_fixed_op_and_rank_among_the_main_norms():
    def run(stage, norm, seed, acc):
        return {"stage": stage, "config": {"model": "vit-mini", "norm": norm, "seed": seed, "lr": 0.001},
                "final": {"val_acc": acc}}
    runs = [run("main", n, s, a + 0.001 * s) for n, a in (("base", 0.86), ("ib_tanh", 0.87), ("dyt", 0.83))
            for s in R.SEEDS]
    runs += [run("learnable", "ib_tanh:learnable_strength=1", s, 0.865 + 0.001 * s + 0.0005 * (s == 1)) for s in R.SEEDS]
    lines, _ = RS.main_section(runs, "learnable", "Learnable")
    row = next(line for line in lines if line.startswith("| ib_tanh:learnable_strength=1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4].startswith("+0.0052 [") and cells[5] == "better"  # against the base norm
    assert cells[6].startswith("-0.0048 [") and cells[7] == "worse"  # against ib_tanh at its fixed strength
    assert cells[8] == "2 of 4"  # behind ib_tanh, ahead of base and dyt
    assert "rank" not in RS.main_section(runs)[0][2]  # the main table itself has no such columns


def test_score_tables_say_when_a_significant_difference_is_smaller_than_the_bound():
    """A systematic difference whose whole interval lies inside the smallest effect of interest keeps its verdict for
    the rules, and its cell says how small it is: in the learnable-strength and ablation tables as in post-hoc."""
    def run(stage, norm, seed, score, model="vit-mini"):
        return {"stage": stage, "config": {"model": model, "norm": norm, "seed": seed, "lr": 0.001},
                "final": {"val_acc" if model == "vit-mini" else "val_loss": score}}
    jitter = (0.0, 0.0002, -0.0002)
    runs = [run("main", n, s, a + 0.001 * s) for n, a in (("base", 0.86), ("ib_tanh", 0.87)) for s in R.SEEDS]
    runs += [run("learnable", "ib_tanh:learnable_strength=1", s, 0.869 + 0.001 * s + jitter[s]) for s in R.SEEDS]
    lines, comparisons = RS.main_section(runs, "learnable", "Learnable")
    cells = [c.strip() for c in next(line for line in lines if line.startswith("| ib_tanh:learn")).strip("|").split("|")]
    assert cells[5] == "better"  # +0.009 against the base norm: beyond the bound, so no qualifier
    assert cells[7] == "worse, by less than ±0.5 accuracy points"  # -0.001 against the fixed strength
    assert comparisons[("vit-mini", "ib_tanh:learnable_strength=1")][1] == "better"  # the rules read the bare verdict

    abl = [run("ablation", n, s, 1.20 + 0.01 * s - d + jitter[s] * (n != "ib_tanh"), "llama-mini")
           for n, d in (("ib_tanh", 0.0), ("ib_tanh:strength=2.0", 0.002)) for s in R.SEEDS]
    lines, comparisons = RS.ablation_section(abl)
    row = next(line for line in lines if line.startswith("| ib_tanh:strength=2.0 |"))
    assert row.rstrip(" |").endswith("better, by less than ±0.01 nats/byte")
    assert comparisons[("llama-mini", "ib_tanh:strength=2.0")][1] == "better"


def test_forest_panels_keep_the_ibnorm_intervals_readable():
    """A far-off peer is drawn at the edge, not allowed to shrink the IBNorm ops' intervals to a dot; peers on the
    ops' scale stay inside the range."""
    from ibnorm.lab.stats import Paired

    def p(low, high):
        return Paired(n=3, mean=(low + high) / 2, sd=0.01, low=low, high=high, confidence=0.95)
    ops = [p(-0.10, 0.09), p(-0.02, 0.01), p(-0.03, 0.03)]
    far = p(1.67, 1.79)
    lo, hi = RS.forest_range(ops + [far], ops)
    assert lo < -0.10 and 0.09 < hi < far.low
    near = p(0.27, 0.45)  # within four op-widths: on the scale
    lo, hi = RS.forest_range(ops + [near], ops)
    assert lo < -0.10 and hi > 0.45


def test_the_page_opens_with_where_the_sweep_stands():
    from types import SimpleNamespace
    todo = [SimpleNamespace(stage=s) for s in ("posthoc", "ablation", "ablation", "learnable")]
    line = RS.status_lines(todo, 0)[0]
    assert line == ("**Status: in progress.** Still to run: ablation 2, learnable 1, posthoc 1. A verdict marked "
                    "pending waits on them; the others no longer change.")
    assert "Still to run: posthoc 1, 3 that wait on a tuning result." in RS.status_lines(todo[:1], 3)[0]
    assert RS.status_lines([], 0)[0].startswith("**Status: complete.**")
    assert RS.status_lines([], 2)[0].startswith("**Status: in progress.**")  # runs not yet planned are not done


def test_lab_runs_keep_their_strength_when_the_library_default_changes(monkeypatch):
    """A committed "ib_tanh" run was trained at strength 0.5: a new library default must not change what the lab
    builds for that name, while a strength the spec names still wins."""
    import dataclasses as dc
    from ibnorm import ops
    from ibnorm.lab.models import LAB_STRENGTH, build_model
    monkeypatch.setitem(ops.COMPRESSIONS, "tanh", dc.replace(ops.COMPRESSIONS["tanh"], default=2.0))
    assert ops.resolve_strength("tanh", None) == 2.0  # the library follows its new default
    for spec, want in (("ib_tanh", LAB_STRENGTH), ("ib_tanh:learnable_strength=1", LAB_STRENGTH),
                       ("ib_tanh:strength=1.5", 1.5)):
        model, _ = build_model("vit-mini", spec)
        strengths = {m.init_strength for m in model.modules() if hasattr(m, "init_strength")}
        assert strengths == {want}, spec
    assert R.REFERENCE_STRENGTH == LAB_STRENGTH


def test_posthoc_rows_compare_to_the_base_fine_tuned_and_to_the_parent():
    """Each post-hoc row is paired by seed against the base model fine-tuned the same way, and against its parent
    (the main table's base model of that seed) before any fine-tuning."""
    def run(stage, norm, seed, acc, strength=None):
        r = {"stage": stage, "config": {"model": "vit-mini", "norm": norm, "seed": seed, "lr": 0.001},
             "final": {"val_acc": acc}}
        return dict(r, learned_strength={"a": strength, "b": strength + 0.2}) if strength is not None else r
    jitter = (0.0, 0.0005, -0.0005)
    runs = [run("main", "base", s, 0.86 + 0.001 * s) for s in R.SEEDS]
    runs += [run("main", "ib_tanh", s, 0.80) for s in R.SEEDS]  # not a parent: must not be compared with
    runs += [run("posthoc", "base", s, 0.862 + 0.001 * s + jitter[s]) for s in R.SEEDS]
    runs += [dict(run("posthoc", R.POSTHOC_NORMS[2], s, 0.858 + 0.001 * s, strength=0.05 + 0.1 * s),
                  at_start={"val_acc": 0.81 + 0.001 * s}) for s in R.SEEDS]
    lines = RS.posthoc_section(runs)
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in lines if line.startswith("| vit-mini |")}
    base, tanh = rows["base"], rows[R.POSTHOC_NORMS[2]]
    assert base[3] == "—" and base[5:7] == ["—", "—"] and base[7].startswith("+0.0020 [")  # fine-tuning alone moved it
    assert tanh[5].startswith("-0.0040 [") and tanh[6] == "worse"
    assert tanh[7].startswith("-0.0020 [-0.0020, -0.0020]")
    assert tanh[8] == "0.2500 ± 0.1000"
    assert tanh[3].startswith("-0.0500 [-0.0500, -0.0500]")  # the drop at conversion: 0.81 + 0.001 s vs the parent  # mean over layers per seed: 0.15, 0.25, 0.35
    # A systematic difference far below the smallest effect of interest keeps its verdict, and says how small it is.
    tiny = [run("posthoc", R.POSTHOC_NORMS[1], s, 0.862 + 0.001 * s + jitter[s] - 1e-6 * (1 + s / 10)) for s in R.SEEDS]
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in RS.posthoc_section(runs + tiny) if line.startswith("| vit-mini |")}
    assert rows[R.POSTHOC_NORMS[1]][6] == "worse, by less than ±0.5 accuracy points"
    assert rows[R.POSTHOC_NORMS[2]][6] == "worse"  # its interval reaches past the bound (-0.0052)
    # Parents trained again for this stage: their own scores are the parents, and the page says which moved.
    again = [{"config": {"model": "vit-mini", "norm": "base", "seed": s, "lr": 0.001},
              "final": {"val_acc": 0.86 + 0.001 * s + (0.004 if s == 2 else 0.0)}} for s in R.SEEDS]
    lines = RS.posthoc_section(runs, again)
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in lines if line.startswith("| vit-mini |")}
    assert rows[R.POSTHOC_NORMS[2]][7] == "-0.0033 [-0.0091, +0.0024]"  # -0.002, -0.002, -0.006 against them
    note = next(line for line in lines if line.startswith("- vit-mini:"))
    assert "Seeds 0, 1 reproduced the main-table score exactly." in note and "seed 2 0.8620 → 0.8660" in note


def test_normal_contraction_is_one_scale_for_every_op():
    """var(s(u))/var(u) for standard-normal u: 1 at each op's identity, falling as the op compresses harder, and the
    same number a large normal sample gives."""
    assert RS.normal_contraction("power", 1.0) == pytest.approx(1.0, abs=1e-12)
    for op in ("log", "tanh"):
        assert RS.normal_contraction(op, 1e-4) == pytest.approx(1.0, abs=1e-3)
        assert RS.normal_contraction(op, 0.1) > RS.normal_contraction(op, 0.5) > RS.normal_contraction(op, 2.0)
    u = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for op, lam in (("power", 0.25), ("log", 1.0), ("tanh", 0.5)):
        sample = (COMPRESSIONS[op].s(u, lam).var() / u.var()).item()
        assert RS.normal_contraction(op, lam) == pytest.approx(sample, abs=3e-3)


def test_learned_compression_rows_average_the_contraction_over_seeds():
    """Per layer, the contraction of each seed's learned strength, averaged (not the contraction of the averaged
    strength); a layer counts as off at contraction 0.99 or more, and as stronger below the default's."""
    def run(seed, strengths):
        return {"stage": "learnable", "config": {"model": "vit-mini", "norm": "ib_tanh:learnable_strength=1",
                                                  "seed": seed, "lr": 0.001},
                "final": {"val_acc": 0.8}, "learned_strength": dict(zip("abc", strengths))}
    runs = [run(0, (2.0, 0.5, 1e-4)), run(1, (0.1, 0.5, 0.3))]
    c = RS.normal_contraction
    lines = RS.learned_compression_lines(runs)
    row = next(line for line in lines if line.startswith("| vit-mini |"))
    cells = [x.strip() for x in row.strip("|").split("|")]
    want = [(c("tanh", 2.0) + c("tanh", 0.1)) / 2, c("tanh", 0.5), (c("tanh", 1e-4) + c("tanh", 0.3)) / 2]
    assert cells[3] == " ".join(f"{w:.2f}" for w in want)
    assert f"{want[0]:.2f}" != f"{c('tanh', 1.05):.2f}"  # the averaged strength would give another number
    assert cells[4:] == ["0 of 3", "1 of 3"]  # layer a is stronger than the default, b is the default itself
    runs = [run(0, (2.0, 0.5, 1e-4)), run(1, (2.0, 0.5, 1e-4))]
    cells = [x.strip() for x in RS.learned_compression_lines(runs)[4].strip("|").split("|")]
    assert cells[4:] == ["1 of 3", "1 of 3"]
    assert RS.learned_compression_lines([]) == []


# ---- the decisive sweep's planner: fair grids, the strength extension, the stability ladder, the confirmatory gate

def _write_result(root, job, metric=None, curve=((10, 2.0), (500, 1.0)), diverged_at=None):
    """A result file for ``job`` as the runner writes it: ``metric`` is the family's headline metric."""
    from ibnorm.lab.tasks import task_kind
    r = {"config": vars(job.config.resolved()), "stage": job.stage, "tag": job.tag, "curve": [list(p) for p in curve]}
    if diverged_at is None:
        r["final"] = {task_kind(job.config.model).metric: metric}
    else:
        r["diverged_at"] = diverged_at
    path = job.result_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))


def test_a_rate_choice_at_an_edge_extends_the_grid_until_it_is_interior(tmp_path):
    root = tmp_path / "results"
    model = "llama-mini"  # nats/byte: lower is better
    grid = R.FAMILIES[model].lr_grid
    assert R.lr_grid(root, model, "base") == (tuple(grid), False)
    for lr, loss in zip(grid, (1.5, 1.4, 1.3)):  # best at the top edge (0.01)
        _write_result(root, R._tune_job(model, "base", lr), loss)
    assert R.lr_grid(root, model, "base") == ((*grid, 0.03), False) and R.chosen_lr(root, model, "base") is None
    _write_result(root, R._tune_job(model, "base", 0.03), None, diverged_at=7)  # a divergence counts as tried
    assert R.lr_grid(root, model, "base") == ((*grid, 0.03), True) and R.chosen_lr(root, model, "base") == 0.01
    assert R.first_choice(root, model, "base") == 0.01
    # at the bottom edge: down the ladder, 3e-4 then 1e-4
    for lr, loss in zip(grid, (1.3, 1.4, 1.5)):
        _write_result(root, R._tune_job(model, "ib_log", lr), loss)
    _write_result(root, R._tune_job(model, "ib_log", 3e-4), 1.2)
    assert R.lr_grid(root, model, "ib_log") == ((1e-4, 3e-4, *grid), False)
    _write_result(root, R._tune_job(model, "ib_log", 1e-4), 1.25)
    assert R.chosen_lr(root, model, "ib_log") == 3e-4
    assert [R.next_rate(x, True) for x in (0.01, 0.03, 0.3)] == [0.03, 0.1, 1.0] and R.next_rate(1.0, True) is None
    assert R.next_rate(1e-5, False) is None  # LR_MIN ends the ladder


def test_a_moved_choice_supersedes_the_runs_at_the_old_rate(tmp_path):
    root = tmp_path / "results"
    model = "resnet-mini"  # accuracy: higher is better
    lo, mid, hi = R.FAMILIES[model].lr_grid
    for lr, acc in ((lo, 0.80), (mid, 0.85), (hi, 0.90)):
        _write_result(root, R._tune_job(model, "ib_log", lr), acc)
    old = R.Job("main", R._config(model, "ib_log", 0, R.FAMILIES[model].steps, hi))
    _write_result(root, old, 0.9)
    assert R.superseded(root) == []  # the grid is not final: the run at the old choice stays for now
    _write_result(root, R._tune_job(model, "ib_log", 0.1), 0.95)  # the new rate wins: 0.1 is the new top edge
    _write_result(root, R._tune_job(model, "ib_log", 0.3), 0.5)
    assert R.chosen_lr(root, model, "ib_log") == 0.1
    assert R.superseded(root) == [old.result_path(root)]
    todo = {j.name for j in R.pending(root, stages=["main"], models=[model])[0]}
    assert old.name in todo  # same name, new rate: to be run again
    assert R.prune(root) == [old.result_path(root)] and not old.result_path(root).exists()


def test_the_stability_ladder_climbs_until_a_run_diverges(tmp_path):
    root = tmp_path / "results"
    model = "gpt2-mini"
    grid = R.FAMILIES[model].lr_grid
    for lr, loss in zip(grid, (1.5, 1.3, 1.4)):
        _write_result(root, R._tune_job(model, "ib_tanh", lr), loss)
    assert R.stability_rates(root, model, "ib_tanh") == [0.03]
    _write_result(root, R._stability_job(model, "ib_tanh", 0.03), 2.0)
    assert R.stability_rates(root, model, "ib_tanh") == [0.03, 0.1]
    # a loss above its start at the end is a divergence, like a non-finite one
    _write_result(root, R._stability_job(model, "ib_tanh", 0.1), 5.0, curve=((10, 5.0), (500, 5.2)))
    assert R.diverged(R.read_result(R._stability_job(model, "ib_tanh", 0.1).result_path(root)))
    assert R.stability_rates(root, model, "ib_tanh") == [0.03, 0.1]  # stops there
    # a tuning run that diverged already bounds the rate: no ladder
    for lr, loss in zip(grid, (1.5, 1.3, None)):
        _write_result(root, R._tune_job(model, "base", lr), loss, diverged_at=None if loss else 3)
    assert R.stability_rates(root, model, "base") == []


def test_the_stability_section_counts_the_ops_against_the_base_norm_past_its_best_rate():
    """Above the base norm's best rate, each op's cell is compared with the base norm's at the same rate: a better
    score wins, a tie or a divergence does not; below the best nothing counts, and an unfinished ladder leaves the
    family out."""
    from ibnorm.lab.results.stability import past_the_base_best
    def run(norm, lr, loss, diverged=False):
        r = {"stage": "tune", "config": {"model": "gpt2-mini", "norm": norm, "lr": lr, "seed": R.TUNE_SEED},
             "final": {"val_loss": loss}, "curve": [[10, 5.0], [20, 6.0 if diverged else loss]]}
        return r
    rates = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    base = [2.2, 1.9, 1.95, 2.5, 2.7, 3.0, 3.1]  # best at 0.003
    table = {("gpt2-mini", "base"): {lr: run("base", lr, v) for lr, v in zip(rates, base)}}
    for norm, delta in (("ib_power", -0.1), ("ib_log", 0.1), ("ib_tanh", 0.0)):  # better, worse, tied everywhere
        table[("gpt2-mini", norm)] = {lr: run(norm, lr, v + delta) for lr, v in zip(rates, base)}
    assert past_the_base_best(table) == {"gpt2-mini": (5, 15)}
    table[("gpt2-mini", "ib_power")][1.0] = run("ib_power", 1.0, 1.0, diverged=True)  # a divergence loses
    assert past_the_base_best(table) == {"gpt2-mini": (4, 15)}
    del table[("gpt2-mini", "ib_log")][1.0]  # its ladder has neither diverged nor reached the top: still climbing
    assert past_the_base_best(table) == {}


def test_the_strength_ablation_extends_while_its_largest_strength_wins(tmp_path):
    root = tmp_path / "results"
    model, op, lr = "llama-mini", "ib_tanh", 0.003
    def put(v, loss):
        norm, tag = (op, "reference") if v == R.REFERENCE_STRENGTH else (f"{op}:strength={v}", "strength")
        for s in R.SEEDS:
            _write_result(root, R._ablation_job(model, norm, lr, tag, s), loss)
    for v, loss in ((0.1, 1.6), (0.5, 1.5), (1.0, 1.45), (2.0, 1.4)):
        put(v, loss)
    assert R.strength_grid(root, model, op, lr) == ((0.1, 0.5, 1.0, 2.0, 4.0), False)
    put(4.0, 1.35)
    assert R.strength_grid(root, model, op, lr) == ((0.1, 0.5, 1.0, 2.0, 4.0, 8.0), False)
    put(8.0, 1.38)
    assert R.strength_grid(root, model, op, lr) == ((0.1, 0.5, 1.0, 2.0, 4.0, 8.0), True)
    for v, loss in ((0.25, 1.6), (0.5, 1.5), (0.75, 1.45), (1.0, 1.4)):  # power ends at 1 (its identity)
        norm, tag = ("ib_power", "reference") if v == 0.5 else (f"ib_power:strength={v}", "strength")
        for s in R.SEEDS:
            _write_result(root, R._ablation_job(model, norm, lr, tag, s), loss)
    assert R.strength_grid(root, model, "ib_power", lr)[1] is True


def test_confirmatory_runs_wait_for_a_committed_preregistration(tmp_path):
    root = tmp_path / "results"
    assert R.registered(root) is None
    assert not [j for j in R.planned_jobs(root)[0] if j.stage == "confirmatory"]
    pre = root / R.PREREGISTRATION
    pre.parent.mkdir(parents=True)
    pre.write_text('# text\n```json\n{"registered": {"gpt2-mini": {"norm": "ib_tanh:strength=4.0", "lr": 0.003}}}\n```\n')
    jobs = [j for j in R.planned_jobs(root)[0] if j.stage == "confirmatory"]
    assert {j.config.seed for j in jobs} == set(R.CONFIRM_SEEDS) and all(j.config.lr == 0.003 for j in jobs)
    assert all(j.config.steps == R.FAMILIES["gpt2-mini"].steps and j.area == "confirmatory" for j in jobs)
    pre.with_name("PREREGISTRATION-2.md").write_text(
        '# amended\n```json\n{"registered": {"gpt2-mini": {"norm": "ib_tanh", "lr": 0.003}}}\n```\n')
    jobs = [j for j in R.planned_jobs(root)[0] if j.stage == "confirmatory"]
    assert {j.config.seed for j in jobs} == {8, 9, 10}  # a main-table op: seeds 3-7 are the main table's


def test_the_ladder_and_the_registered_posthoc_wait_for_the_registration(tmp_path):
    root = tmp_path / "results"
    def stages(jobs):
        return {j.stage for j in jobs}
    jobs, _ = R.planned_jobs(root)
    assert not {"scale_tune", "scale"} & stages(jobs)
    pre = root / R.PREREGISTRATION
    pre.parent.mkdir(parents=True)
    pre.write_text('```json\n{"registered": {"llama-mini": {"norm": "ib_tanh:strength=4.0", "lr": 0.003}}}\n```\n')
    jobs, _ = R.planned_jobs(root)
    tune = [j for j in jobs if j.stage == "scale_tune"]
    assert {(j.config.norm, j.config.width, j.config.depth) for j in tune} == {
        (n, w, d) for n in ("base", "ib_tanh:strength=4.0") for w, d in R.LADDER["llama-mini"]}
    assert all(j.area == "scale" and j.config.steps == R.FAMILIES["llama-mini"].tune_steps for j in tune)
    size = R.LADDER["llama-mini"][0]
    for lr, loss in zip(R.FAMILIES["llama-mini"].lr_grid, (1.3, 1.2, 1.25)):  # each rung tunes on its own
        _write_result(root, R._tune_job("llama-mini", "base", lr, size), loss)
    main = [j for j in R.planned_jobs(root)[0] if j.stage == "scale"]
    assert {(j.config.seed, j.config.lr, j.config.width, j.config.depth) for j in main} == {
        (s, 0.003, *size) for s in R.SEEDS}
    assert main[0].name == f"scale__w{size[0]}-d{size[1]}__llama-mini__base__s0"


def test_posthoc_conversions_start_away_from_the_identity(tmp_path):
    root = tmp_path / "results"
    for lr, acc in zip(R.FAMILIES["resnet-mini"].lr_grid, (0.8, 0.9, 0.85)):
        _write_result(root, R._tune_job("resnet-mini", "base", lr), acc)
    post = [j for j in R.planned_jobs(root)[0] if j.stage == "posthoc" and j.config.model == "resnet-mini"]
    away = [j for j in post if j.config.norm in R.POSTHOC_AWAY]
    assert len(away) == len(R.POSTHOC_AWAY) * len(R.SEEDS)
    assert all(j.config.recalibrate_bn == R.POSTHOC_RECALIBRATE["resnet-mini"] for j in away)
    assert all(j.config.recalibrate_bn == 0 for j in post if j.config.norm in R.POSTHOC_NORMS)  # as they ran
    assert R.posthoc_registered("ib_log:strength=2.0") == ["ib_log:strength=2.0", "ib_log:strength=2.0,learnable_strength=1"]
    assert R.posthoc_registered("ib_tanh:learnable_strength=1") == list(R.POSTHOC_AWAY)


def test_the_confirmatory_section_pairs_seeds_3_to_10_and_decides_each_family(tmp_path):
    root = tmp_path / "results"
    pre = root / R.PREREGISTRATION
    pre.parent.mkdir(parents=True)
    pre.write_text('```json\n{"registered": {"llama-mini": {"norm": "ib_tanh", "lr": 0.003}}}\n```\n')
    def run(stage, norm, seed, loss):
        return {"stage": stage, "config": {"model": "llama-mini", "norm": norm, "seed": seed, "lr": 0.003},
                "final": {"val_loss": loss}}
    main = [run("main", n, s, 1.2 + 0.01 * s - (0.02 if n == "ib_tanh" else 0) + 0.001 * (s % 2))
            for n in ("base", "ib_tanh") for s in R.MAIN_SEEDS]
    conf = [run("confirmatory", n, s, 1.2 + 0.01 * s - (0.02 if n == "ib_tanh" else 0)) for n in ("base", "ib_tanh")
            for s in (8, 9, 10)]
    lines, done, decisions = RS.confirmatory_section({"reproduction": main, "confirmatory": conf}, root)
    row = next(line for line in lines if line.startswith("| llama-mini | `ib_tanh` | 8/8"))
    assert "better" in row and done[("llama-mini", "ib_tanh")][1] == "better"
    assert done[("llama-mini", "ib_tanh")][0].n == 8  # seeds 0-2 chose the configuration: never paired here
    lines, done, decisions = RS.confirmatory_section({"reproduction": main, "confirmatory": conf[:2]}, root)
    assert not done and not decisions  # a family counts once all its seeds are in


def test_scale_rows_carry_size_and_parameters():
    from ibnorm.lab.results.scale import SCALE_COLUMNS, scale_rows
    r = {"stage": "scale", "tag": "w256-d8", "n_params": 1234, "final": {"val_loss": 1.1},
         "config": {"model": "llama-mini", "norm": "base", "seed": 1, "lr": 0.003, "steps": 2000, "width": 256, "depth": 8}}
    row = scale_rows([r])[0]
    assert {k: row[k] for k in ("model", "norm", "seed", "width", "depth", "n_params", "score")} == {
        "model": "llama-mini", "norm": "base", "seed": 1, "width": 256, "depth": 8, "n_params": 1234, "score": 1.1}
    assert set(SCALE_COLUMNS) >= {"model", "norm", "seed", "width", "depth", "n_params", "score"}


def test_preregister_writes_the_pick_and_its_tuned_rate_once(tmp_path, monkeypatch):
    from ibnorm.lab import preregister as P
    model = "gpt2-mini"
    monkeypatch.setattr(R, "FAMILIES", {model: R.FAMILIES[model]})
    root = tmp_path / "results"
    grid = R.FAMILIES[model].lr_grid
    losses = {"base": 1.30, "ib_power": 1.29, "ib_log": 1.31, "ib_tanh": 1.28}
    for norm, loss in losses.items():
        for lr, bump in zip(grid, (0.1, 0.0, 0.05)):  # the middle rate wins: interior
            _write_result(root, R._tune_job(model, norm, lr), loss + bump)
        for s in R.SEEDS:
            _write_result(root, R.Job("main", R._config(model, norm, s, R.FAMILIES[model].steps, grid[1])), loss + 0.001 * s)
            if norm != "base":
                learn = f"{norm}:learnable_strength=1"
                _write_result(root, R.Job("learnable", R._config(model, learn, s, R.FAMILIES[model].steps, grid[1])),
                              loss - (0.03 if norm == "ib_log" else 0.0) + 0.001 * s)
    assert P.missing(root) == [f"{model}: the tuning of `ib_log:learnable_strength=1`"]
    with pytest.raises(ValueError, match="waits on"):
        P.write(root)
    for lr, loss in zip(grid, (1.4, 1.25, 1.3)):
        _write_result(root, R._tune_job(model, "ib_log:learnable_strength=1", lr), loss)
    path = P.write(root, "abc1234")
    assert R.registered(root) == {model: {"norm": "ib_log:learnable_strength=1", "lr": grid[1]}}
    text = path.read_text()
    assert "at commit abc1234" in text and "Holm" in text and "TOST" in text and "Seeds 3-10" in text
    with pytest.raises(ValueError, match="already holds a registration"):
        P.write(root)
