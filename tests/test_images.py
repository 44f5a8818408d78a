"""Image folders of the user's own (ImageNet layout): a scale preset trains on them, the classes come from the folder
names, and bad data is named in one line."""
import json
import os

import numpy as np
import pytest
import torch

from ibnorm.lab.cli import main


def _folder(root, classes=("cat", "dog"), per=6, size=(40, 30)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                a = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
                Image.fromarray(a).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


ARGS = ["train", "--model", "vit-s16", "--width", "16", "--depth", "1", "--heads", "2", "--image-size", "32",
        "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--warmup-steps", "1", "--no-progress"]


def test_a_scale_preset_trains_on_an_image_folder(tmp_path):
    data = _folder(tmp_path / "imgs", classes=("ant", "bee", "cow"))
    assert main([*ARGS, "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["classes"] == ["ant", "bee", "cow"] and 0 <= result["final"]["val_acc"] <= 1
    model = torch.load(tmp_path / "run" / "model.pt")
    assert model["classifier.weight"].shape[0] == 3  # the head follows the data


def test_augmentation_is_a_function_of_seed_and_step(tmp_path):
    from ibnorm.lab.data.images import ImageFolderData
    data = ImageFolderData(_folder(tmp_path / "imgs"), 24)
    idx = torch.tensor([0, 3, 5])
    a, b, c = data.train_x.augmented(idx, 7), data.train_x.augmented(idx, 7), data.train_x.augmented(idx, 8)
    assert a.shape == (3, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert data.test_x[0:2].shape == (2, 3, 24, 24)


@pytest.mark.parametrize("case, words", [("one_class", "at least 2"), ("broken", "cannot read the image"),
                                         ("broken_val", "cannot read the image"), ("no_val", "val is missing")])
def test_bad_image_folders_are_one_line(tmp_path, capsys, case, words):
    data = _folder(tmp_path / "imgs", classes=("only",) if case == "one_class" else ("a", "b"))
    if case == "broken":
        (data / "train" / "a" / "0.jpg").write_bytes(b"not an image")
    if case == "broken_val":  # found by an evaluation DataLoader worker, reported by the training process
        (data / "val" / "b" / "0.jpg").write_bytes(b"not an image")
    if case == "no_val":
        import shutil
        shutil.rmtree(data / "val")
    assert main([*ARGS, "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    if case.startswith("broken"):
        assert "0.jpg" in err  # the line names the file


def _task(tmp_path, **over):
    from ibnorm.lab.tasks import Task
    from ibnorm.lab.train import TrainConfig
    cfg = TrainConfig(model="vit-s16", data=str(_folder(tmp_path / "imgs")), image_size=24, batch_size=4, **over)
    return Task(cfg.resolved())


def test_the_dataloader_workers_decode_the_same_batches_in_step_order(tmp_path):
    """Training batches decoded by DataLoader worker processes, from any starting step (a resume), are the tensors
    the training process would decode itself; a rank's shard is its slice of the global batch, pixel for pixel."""
    task = _task(tmp_path)
    own = [task.batch(step) for step in range(2, 7)]
    loaded = list(task.batches(2, 7, workers=2))
    assert len(loaded) == 5
    for (x, y), (lx, ly) in zip(own, loaded):
        assert torch.equal(x, lx) and torch.equal(y, ly)
    for rank in (0, 1):
        (x, y), (sx, sy) = task.batch(3), next(task.batches(3, 4, shard=(rank, 2), workers=1))
        assert torch.equal(sx, x[rank * 2:(rank + 1) * 2]) and torch.equal(sy, y[rank * 2:(rank + 1) * 2])


def test_a_run_is_the_same_with_or_without_dataloader_workers(tmp_path):
    data = _folder(tmp_path / "imgs")
    results = []
    for workers in ("0", "2"):
        assert main([*ARGS, "--steps", "3", "--data", str(data), "--workers", workers, "--out", str(tmp_path / workers)]) == 0
        results.append(json.loads((tmp_path / workers / "result.json").read_text()))
    timing = {"elapsed", "cpu_elapsed", "images_per_s", "tokens_per_s"}
    final = [{k: v for k, v in r["final"].items() if k not in timing} for r in results]
    assert final[0] == final[1] and "val_acc" in final[0] and results[0]["curve"] == results[1]["curve"]


class _PidRecorder:
    """An image source that notes which process opened each image."""

    def __init__(self, source, log):
        self.source, self.log = source, log

    def __len__(self):
        return len(self.source)

    def open(self, i):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.source.open(i)


def test_evaluation_batches_are_decoded_by_dataloader_workers_with_the_same_metrics(tmp_path):
    from ibnorm.lab.models import build_model
    from ibnorm.lab.train import model_overrides
    task = _task(tmp_path, eval_batch_size=5)  # 12 images in chunks of 5: a short last chunk
    log = tmp_path / "pids"
    task.vision.test_x.source = _PidRecorder(task.vision.test_x.source, log)
    torch.manual_seed(0)
    model, _ = build_model("vit-s16", "base", width=16, depth=1, heads=2, **model_overrides(task.cfg, task))
    own = task.evaluate(model, torch.device("cpu"))
    own_pids = set(log.read_text().split())
    log.unlink()
    loaded = task.evaluate(model, torch.device("cpu"), workers=2)
    worker_pids = set(log.read_text().split())
    assert own == loaded and own_pids == {str(os.getpid())}
    assert worker_pids and str(os.getpid()) not in worker_pids  # decoded in the workers, not here
    assert len(log.read_text().split()) == 12  # every image once
