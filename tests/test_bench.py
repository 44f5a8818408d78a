"""`ibnorm bench` on tiny shapes: the ratios, memory accounting and report it writes (no timing asserts)."""
import pytest
import torch

from ibnorm.lab import bench


def test_bench_measures_ratios_memory_and_writes_its_report():
    pytest.importorskip("transformers")
    res = bench.run(rounds=2, quick=False, row_shapes=((33, 64), (7, 48)), nchw=(3, 8, 5, 5), models=("vit-mini",))
    assert set(res["rows"]) == {"33x64 float32", "7x48 float32", "33x64 bfloat16", "7x48 bfloat16"}
    for section, base in (("rows", "nn.LayerNorm"), ("nchw", "nn.BatchNorm2d")):
        for key, r in res[section].items():
            # ratios are per-round quotients to the base timed in the same round: recompute one from the times
            assert r["IB-tanh fast"]["saved_ratio"] == pytest.approx(r["IB-tanh fast"]["saved_bytes"] / r[base]["saved_bytes"])
            assert r["_copy"]["GBps"] > 0 and r["_copy"]["ms"] > 0
            for name, v in r.items():
                if name.startswith("_"):
                    continue
                assert v["fwd_ms"] > 0 and v["fwdbwd_ms"] > 0 and v["saved_bytes"] > 0, (key, name)
            # the reference path keeps every intermediate for autograd; the kernels do not
            assert r["IB-tanh ref"]["saved_bytes"] > r["IB-tanh fast"]["saved_bytes"], key
    from ibnorm.kernels import cpu
    if cpu.load() is not None:  # the C++ kernel saves what nn.LayerNorm saves (input, mean, rstd)
        assert res["rows"]["33x64 float32"]["IB-power fast"]["saved_ratio"] == pytest.approx(1.0, abs=0.05)
        # the floor: s(u) alone per op, timed with the rest, as a ratio to the base norm of the same round
        for section in ("rows", "nchw"):
            for key, r in res[section].items():
                assert set(r["_transcendental"]) == {"power", "log", "tanh"}, key
                assert all(v["ms"] > 0 and v["ratio"] > 0 for v in r["_transcendental"].values()), key
    assert set(res["nchw"]) == {"3x8x5x5 float32", "3x8x5x5 float32 channels_last", "3x8x5x5 bfloat16",
                                "3x8x5x5 bfloat16 channels_last"}
    steps = res["train_step"]["vit-mini"]
    assert set(steps) == {"base", "ib_power:strength=0.7", "ib_log:strength=0.7", "ib_tanh:strength=0.7", "dyt",
                          "normalnorm"}
    assert steps["base"]["ratio"] == 1.0 and all(v["ms"] > 0 for v in steps.values())

    res["environment"] = {"torch": torch.__version__, "threads": 1, "cpu": "x", "cpu_capability": "DEFAULT", "malloc": "default"}
    md = bench.to_markdown(res, "ibnorm bench --rounds 2")
    assert "Regenerate: `ibnorm bench --rounds 2`" in md
    assert "## 7x48 bfloat16 (base: nn.LayerNorm" in md and "## 3x8x5x5 float32 (base: nn.BatchNorm2d" in md
    assert md.count("| IB-log fast |") == 8 and "| 3x8x5x5 bfloat16 channels_last | nn.BatchNorm2d |" in md
    if cpu.load() is not None:
        floor = [line for line in md.splitlines() if line.startswith("| 7x48 float32 | ")][1].split(" | ")
        ident, s_power, kernel_power = (float(floor[i].rstrip("x")) for i in (1, 2, 6))
        assert float(floor[5].rstrip("x")) == pytest.approx(ident + s_power, abs=0.011)  # floor = identity + s(u)
        assert kernel_power == pytest.approx(res["rows"]["7x48 float32"]["IB-power fast"]["fwdbwd_ratio"], abs=0.005)
    assert "| model | base ms/step | power | log | tanh | dyt | normalnorm |" in md and "| vit-mini |" in md


@pytest.mark.slow  # half a minute: eight full-size ResNet-18 steps; the default suite keeps under 6 minutes
def test_the_scale_benchmark_runs_and_writes_its_table(tmp_path):
    """benchmarks/scale_cpu.py (a smoke run on one preset): the step ratios and the data path's speeds are written."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "scale_cpu.py"), "--presets", "resnet18",
                          "--rounds", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "scale_cpu.json").read_text())
    assert set(res["steps"]["resnet18"]) == {"ib_tanh", "ib_log", "ib_power"}
    assert res["data"]["tokens_per_s"] > 0 and res["data"]["images_per_s"] > 0
    # headroom = images/s loaded over images/s one base step consumes (batch 2 / its time)
    step_rate = 2 / (res["steps"]["resnet18"]["ib_tanh"]["base_ms"] / 1e3)
    assert res["data"]["vision_headroom"] == pytest.approx(res["data"]["images_per_s"] / step_rate)
    assert "lm_headroom" not in res["data"]  # no LM preset ran
    assert res["environment"]["kernel"] != "none loaded (no IBNorm layer ran)"
    md = (tmp_path / "scale_cpu.md").read_text()
    assert "| resnet18 |" in md and "| 1.25x |" in md and "bar 20x" in md
