"""benchmarks/gpu.py runs on the CPU (``--device cpu --smoke``), and the choice table it writes steers ``impl="auto"``
under ``torch.compile`` on CUDA only: the script is tested here so that a session with a GPU can run it at once."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import skip_reason
from ibnorm.kernels import cuda_choice

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_runs_on_cpu_and_writes_a_choice_table(tmp_path, monkeypatch):
    from ibnorm.kernels import cpu
    if not cpu.available():
        pytest.skip(skip_reason("ext", f"the C++ kernel stands in for Triton here: {cpu._failed}"))
    calls, real = [], cpu.ib_rows
    monkeypatch.setattr(cpu, "ib_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    choice = tmp_path / "choice.json"
    assert _script().main(["--device", "cpu", "--smoke", "--rounds", "1", "--out", str(tmp_path), "--choice", str(choice)]) == 0
    res = json.loads((tmp_path / "norms_cuda.json").read_text())
    (row,) = res["rows"].values()
    assert set(row) == {"nn.LayerNorm", "tanh triton", "tanh triton compiled", "tanh reference compiled"}
    assert row["nn.LayerNorm"]["fwdbwd_ratio"] == 1.0 and all(v["fwd_ms"] > 0 for v in row.values())
    assert set(res["train_step"]["gpt2-mini"]) == {"base", "ib_tanh:strength=0.7"}
    assert calls  # the CPU stand-in for Triton ran the C++ kernel
    table = cuda_choice.load(choice)
    assert list(table) == ["layer/tanh/float32"] and table["layer/tanh/float32"] in cuda_choice.CHOICES
    assert "| layer/tanh/float32 |" in (tmp_path / "norms_cuda.md").read_text()


def test_the_gpu_bench_asks_for_a_gpu_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _script().main(["--out", str(tmp_path)]) == 2
    assert "--device cpu --smoke" in capsys.readouterr().err


def test_choice_steers_auto_only_for_cuda_inputs_under_compile(monkeypatch, tmp_path):
    """The measured table is read by key; a CPU input, or an eager call, never leaves the kernel."""
    path = tmp_path / "choice.json"
    path.write_text(json.dumps({"choices": {"layer/tanh/bfloat16": "inductor", "rms/tanh/bfloat16": "triton"}}))
    monkeypatch.setattr(cuda_choice, "_choices", cuda_choice.load(path))

    class FakeCuda:
        is_cuda, dtype = True, torch.bfloat16
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert cuda_choice.compiled_reference_is_faster(FakeCuda(), "layer", "tanh")
    assert not cuda_choice.compiled_reference_is_faster(FakeCuda(), "rms", "tanh")
    assert not cuda_choice.compiled_reference_is_faster(FakeCuda(), "layer", "power")  # not measured: Triton
    assert not cuda_choice.compiled_reference_is_faster(torch.zeros(1, dtype=torch.bfloat16), "layer", "tanh")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert not cuda_choice.compiled_reference_is_faster(FakeCuda(), "layer", "tanh")


def test_a_choice_table_with_an_unknown_kernel_is_refused(tmp_path):
    path = tmp_path / "choice.json"
    path.write_text(json.dumps({"choices": {"layer/tanh/float32": "cudnn"}}))
    with pytest.raises(ValueError, match="every choice must be one of"):
        cuda_choice.load(path)
    assert cuda_choice.load(tmp_path / "absent.json") == {}


def test_choices_take_the_faster_compiled_path_over_the_shapes():
    def row(triton_ms, inductor_ms):
        return {"tanh triton compiled": {"fwdbwd_ms": triton_ms}, "tanh reference compiled": {"fwdbwd_ms": inductor_ms}}
    rows = {"layer 8x8 float32": row(2.0, 1.0), "layer 16x16 float32": row(1.0, 1.5),  # geometric mean 4/3: inductor
            "rms 8x8 float32": row(1.0, 3.0)}
    got = _script().choices(rows)
    assert got["layer/tanh/float32"]["choice"] == "inductor"
    assert got["layer/tanh/float32"]["triton_over_inductor"] == pytest.approx((2.0 / 1.5) ** 0.5)
    assert got["rms/tanh/float32"]["choice"] == "triton"


@pytest.mark.parametrize("grouping", ["layer", "rms"])
def test_auto_dispatch_consults_the_choice(grouping, monkeypatch):
    """Where the choice says Inductor, ``auto`` hands the layer to the reference (this CPU stand-in forces the answer)."""
    from ibnorm import functional as F
    from ibnorm import reference as R
    asked, used = [], []
    monkeypatch.setattr(cuda_choice, "compiled_reference_is_faster", lambda x, g, op: asked.append((g, op)) or True)
    name = "ib_layer_norm" if grouping == "layer" else "ib_rms_norm"
    real = getattr(R, name)
    monkeypatch.setattr(R, name, lambda *a, **k: used.append(1) or real(*a, **k))
    getattr(F, name)(torch.randn(3, 8), (8,), compression="tanh", strength=0.7)
    assert asked == [(grouping, "tanh")] and used == [1]


def _scale_script():
    spec = importlib.util.spec_from_file_location("gpu_scale", REPO / "benchmarks" / "gpu_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_gpu_scale_script_keeps_to_its_budget_and_still_writes(tmp_path):
    """With no time left, every part is recorded as skipped (never half-measured), and both files are written."""
    assert _scale_script().main(["--device", "cpu", "--smoke", "--budget-s", "0", "--out", str(tmp_path),
                                 "--presets", "resnet18,gpt2-124m"]) == 0
    res = json.loads((tmp_path / "scale_cuda.json").read_text())
    assert res["compiled_step"] == {"resnet18": {"skipped": "out of the time budget"},
                                    "gpt2-124m": {"skipped": "out of the time budget"}}
    assert res["trainer"] == {"skipped": "out of the time budget"}
    assert "| resnet18 | out of the time budget |" in (tmp_path / "scale_cuda.md").read_text()


def test_the_gpu_scale_script_refuses_bad_presets_and_a_missing_gpu(tmp_path, capsys, monkeypatch):
    assert _scale_script().main(["--device", "cpu", "--presets", "vit-mini", "--out", str(tmp_path)]) == 2
    assert "--presets must name scale presets; got vit-mini" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _scale_script().main(["--out", str(tmp_path)]) == 2
    assert "--device cpu --smoke" in capsys.readouterr().err


@pytest.mark.slow
def test_the_gpu_scale_script_runs_on_cpu(tmp_path):
    """The GPU check's second and third parts, on the CPU at reduced size: a bf16 compiled step of an LM and a ResNet
    with both norms, and the trainer's bf16 compiled runs with their throughput."""
    assert _scale_script().main(["--device", "cpu", "--smoke", "--presets", "llama-60m,resnet18", "--train-steps", "2",
                                 "--budget-s", "3000", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "scale_cuda.json").read_text())
    for preset in ("llama-60m", "resnet18"):
        assert set(res["compiled_step"][preset]) == {"base", "ib_tanh"}, res["compiled_step"][preset]
        assert all(v["step_ms"] > 0 and v["first_step_s"] > 0 for v in res["compiled_step"][preset].values())
    assert set(res["trainer"]) == {"base", "ib_tanh"}, res["trainer"]
    assert all(v["tokens_per_s"] > 0 and v["val_loss"] > 0 for v in res["trainer"].values())
