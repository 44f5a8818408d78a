"""Multi-process training on CPU with gloo: synchronized batch IBNorm, DDP training and resume across world sizes."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ibnorm
from ibnorm.distributed import IBSyncBatchNorm, convert_sync_ibnorm
from test_data import needs_austen, needs_fashion

OPS = [("power", 0.3), ("log", 0.8), ("tanh", 1.3), ("none", None)]
# Sync cases: name -> (op, strength, layer options, channels_last). The C++ sync kernel must run for every one.
SYNC_CASES = {op: (op, lam, {}, False) for op, lam in OPS}
SYNC_CASES.update({
    "tanh learnable, channels_last": ("tanh", 0.7, {"learnable_strength": True}, True),
    "log standardize_then_compress": ("log", 0.8, {"order": "standardize_then_compress"}, False),
    "power reference": ("power", 0.3, {"impl": "reference"}, False),
})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, 4, generator=g) * torch.randn(8, 3, 5, 4, generator=g).exp() + 2
    w = torch.randn(8, 3, 5, 4, generator=g)  # loss = sum(y * w): a fixed, non-trivial upstream gradient
    return x, w


def make_layer(cls, op, lam, **kwargs):
    m = cls(3, compression=op, strength=lam, momentum=0.3, **kwargs)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return m


def run_layer_steps(m, x, w, steps=2, channels_last=False):
    for _ in range(steps):
        xg = x.detach().clone()
        if channels_last:
            xg = xg.contiguous(memory_format=torch.channels_last)
        xg.requires_grad_(True)
        m.zero_grad()
        y = m(xg)
        (y * w).sum().backward()
    grads = [m.weight.grad.clone(), m.bias.grad.clone()]
    if m.strength_raw is not None:
        grads.append(m.strength_raw.grad.clone())
    return y.detach(), xg.grad, grads


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from ibnorm.kernels import cpu
    calls = []
    kernel = cpu.ib_channels_sync
    cpu.ib_channels_sync = lambda *a, **k: calls.append(1) or kernel(*a, **k)  # which path ran
    x, w = full_batch()
    per = x.shape[0] // world
    sl = slice(rank * per, (rank + 1) * per)
    results = {}
    for name, (op, lam, kwargs, channels_last) in SYNC_CASES.items():
        m = make_layer(IBSyncBatchNorm, op, lam, **kwargs)
        calls.clear()
        y, gx, grads = run_layer_steps(m, x[sl], w[sl], channels_last=channels_last)
        for g in grads:
            dist.all_reduce(g)  # what DDP does with parameter gradients (sum; the loss is a sum here)
        ys = [torch.zeros_like(y) for _ in range(world)]
        gxs = [torch.zeros_like(gx) for _ in range(world)]
        dist.all_gather(ys, y.contiguous())
        dist.all_gather(gxs, gx.contiguous())
        results[name] = {"y": torch.cat(ys), "gx": torch.cat(gxs), "grads": grads, "kernel_calls": len(calls),
                         "buffers": {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_sync_ibnorm_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    x, w = full_batch()
    for case, (op, lam, kwargs, channels_last) in SYNC_CASES.items():
        ref = make_layer(ibnorm.IBBatchNorm2d, op, lam, **kwargs)
        y, gx, grads = run_layer_steps(ref, x, w, channels_last=channels_last)
        got = r0[case]
        # The C++ sync kernel ran on every rank (twice: two steps), unless the case asks for the reference.
        assert got["kernel_calls"] == r1[case]["kernel_calls"] == (0 if kwargs.get("impl") == "reference" else 2), case
        pairs = [("output", got["y"], y), ("input grad", got["gx"], gx)]
        pairs += [(f"parameter grad {i}", a, b) for i, (a, b) in enumerate(zip(got["grads"], grads, strict=True))]
        for name, a, b in pairs:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{case}: {name}")
        for k, v in got["buffers"].items():
            torch.testing.assert_close(v, ref.state_dict()[k], atol=1e-5, rtol=1e-5, msg=f"{case}: {k}")
            assert torch.equal(v, r1[case]["buffers"][k]), f"{case}: {k} differs between ranks"


def test_convert_sync_ibnorm_keeps_state():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), ibnorm.IBBatchNorm2d(3, compression="tanh", strength=0.7))
    with torch.no_grad():
        model[0].running_mean.fill_(0.5)
        model[1].running_var_c.fill_(0.25)
    model.eval()
    conv = convert_sync_ibnorm(model)
    assert all(isinstance(m, IBSyncBatchNorm) for m in conv)
    assert conv[0].compression == "none" and conv[1].compression == "tanh" and conv[1].init_strength == 0.7
    assert float(conv[0].running_mean[0]) == 0.5 and float(conv[1].running_var_c[0]) == 0.25 and not conv[0].training
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(conv(x), model(x))  # outside a process group it is the plain layer


def _torchrun(nproc, args, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(free_port()),
           "-m", "ibnorm.lab.cli", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _train_args(out, batch, steps, **extra):
    args = ["--model", "resnet-mini", "--width", "8", "--batch-size", str(batch), "--steps", str(steps),
            "--train-subset", "512", "--eval-every", "2", "--eval-examples", "128", "--warmup-steps", "1",
            "--checkpoint-every", "2", "--threads", "1", "--no-progress", "--out", str(out)]
    for k, v in extra.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


def _history(out):
    return json.loads((Path(out) / "result.json").read_text())["history"]


@needs_fashion
@pytest.mark.parametrize("norm", ["base", "ib_tanh"])
def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path, norm):
    two = _torchrun(2, _train_args(tmp_path / "two", 32, 6, norm=norm))
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *_train_args(tmp_path / "one", 32, 6, norm=norm)],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    h2, h1 = _history(tmp_path / "two"), _history(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert two.stdout.count('"val_loss"') == 1 and two.stderr.count("run directory:") == 1  # printed once, by rank 0
    assert [h["step"] for h in h2] == [h["step"] for h in h1] == [2, 4, 6]
    for a, b in zip(h2, h1):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


@needs_fashion
def test_checkpoint_from_two_processes_resumes_under_one(tmp_path):
    out = tmp_path / "run"
    first = _torchrun(2, _train_args(out, 32, 8, norm="ib_log", stop_after=4))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "ckpt.pt").exists() and not (out / "result.json").exists()
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 4
    rest = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *_train_args(out, 32, 8, norm="ib_log")],
                          capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stderr[-3000:]
    ref = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *_train_args(tmp_path / "ref", 32, 8, norm="ib_log")],
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0
    resumed, reference = json.loads((out / "result.json").read_text()), json.loads((tmp_path / "ref" / "result.json").read_text())
    assert resumed["resumed_from"] == [4] and reference["resumed_from"] == []  # it continued from the 2-process checkpoint
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in reference["history"]] == [2, 4, 6, 8]
    for a, b in zip(resumed["history"], reference["history"]):
        # batch statistics summed over two processes round differently from one process's: 1e-4 after resuming
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3), (a, b)
        for key in ("val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


def test_missing_rank_fails_fast_with_a_clear_error(tmp_path):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", RANK="0",
               LOCAL_RANK="0", IBNORM_DIST_TIMEOUT="5")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", "from ibnorm.lab.dist_context import DistContext; DistContext.from_env()"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert "not every rank joined" in proc.stderr and "IBNORM_DIST_TIMEOUT" in proc.stderr


def _lm_args(out, steps, **extra):
    args = ["--model", "gpt2-mini", "--width", "32", "--depth", "2", "--batch-size", "8", "--context", "32",
            "--steps", str(steps), "--eval-every", "2", "--eval-batches", "2", "--warmup-steps", "1",
            "--checkpoint-every", "2", "--threads", "1", "--no-progress", "--norm", "ib_tanh:learnable_strength=1",
            "--out", str(out)]
    for k, v in extra.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


@needs_austen
def test_fsdp_two_processes_match_one_process_and_resume_under_one(tmp_path):
    """FSDP2 (fully_shard) over 2 gloo processes trains as one process does; its torch.distributed.checkpoint
    checkpoint, written by 2 processes, resumes in 1."""
    one = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *_lm_args(tmp_path / "one", 6)],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                          str(free_port()), "-m", "ibnorm.lab.cli", "train", *_lm_args(tmp_path / "two", 6, fsdp="true")],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    stopped = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                              str(free_port()), "-m", "ibnorm.lab.cli", "train",
                              *_lm_args(tmp_path / "resumed", 6, fsdp="true", stop_after=4)],
                             env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert (tmp_path / "resumed" / "ckpt.dcp").is_dir() and not (tmp_path / "resumed" / "result.json").exists()
    rest = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *_lm_args(tmp_path / "resumed", 6, fsdp="true")],
                          capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stderr[-3000:]
    reference = json.loads((tmp_path / "one" / "result.json").read_text())
    for name in ("two", "resumed"):
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert [h["step"] for h in result["history"]] == [2, 4, 6]
        for a, b in zip(result["history"], reference["history"]):
            for key in ("train_loss", "val_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), (name, key, a, b)
    assert json.loads((tmp_path / "resumed" / "result.json").read_text())["resumed_from"] == [4]
    assert not (tmp_path / "resumed" / "ckpt.dcp").exists()  # a finished run keeps no checkpoint


@needs_austen
def test_sharded_evaluation_on_two_ranks_equals_one_process(tmp_path):
    """Each rank scores every other evaluation batch (here of --eval-batch-size windows) and the sums are
    all-reduced: the metrics of one process that scores them all, and the final result printed once."""
    args = ["--model", "llama-mini", "--width", "16", "--depth", "1", "--context", "16", "--batch-size", "8",
            "--steps", "2", "--eval-every", "2", "--eval-batches", "4", "--eval-batch-size", "3", "--warmup-steps", "1",
            "--threads", "1", "--no-progress"]
    two = _torchrun(2, [*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"val_loss"') == 1
    one = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    plain = subprocess.run([sys.executable, "-m", "ibnorm.lab.cli", "train", *[a for a in args if a not in
                            ("--eval-batch-size", "3")], "--out", str(tmp_path / "plain")],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    v2, v1, v0 = (_history(tmp_path / n)[-1]["val_loss"] for n in ("two", "one", "plain"))
    assert v2 == pytest.approx(v1, rel=1e-6) and v1 == pytest.approx(v0, rel=1e-6)  # the same windows, re-batched
