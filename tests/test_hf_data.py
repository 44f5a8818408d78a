"""Datasets saved by Hugging Face ``datasets`` (the optional extra ibnorm[hf]): an image dataset trains a vision
preset with its ClassLabel names, a text column becomes nanoGPT tokens through prepare-text, and bad ones are one
line."""
import json

import numpy as np
import pytest

from conftest import skip_reason
from ibnorm.lab.cli import main

try:
    import datasets
except ImportError:  # an optional extra; CI installs it (IBNORM_REQUIRE_DEPS turns this skip into a failure)
    pytest.skip(skip_reason("deps", "could not import datasets (pip install 'ibnorm[hf]')"), allow_module_level=True)

datasets.disable_progress_bars()  # saving the fixtures must not write to the stderr the tests read

ARGS = ["train", "--model", "vit-s16", "--width", "16", "--depth", "1", "--heads", "2", "--image-size", "32",
        "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--warmup-steps", "1", "--no-progress"]


def _images(n, labels, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)) for _ in range(n)], labels


def _image_dataset(path, names=("ant", "bee", "cow"), val="validation"):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    splits = {}
    for split, seed in (("train", 0), (val, 1)):
        imgs, labels = _images(6, [i % len(names) for i in range(6)], seed)
        splits[split] = datasets.Dataset.from_dict({"img": imgs, "label": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_a_saved_image_dataset_trains_a_vision_preset(tmp_path):
    data = _image_dataset(tmp_path / "hf", val="test")
    assert main([*ARGS, "--data", str(data), "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["classes"] == ["ant", "bee", "cow"] and 0 <= result["final"]["val_acc"] <= 1


def test_saved_image_rows_decode_like_image_files(tmp_path):
    """Row i's pixels go through the same crop and normalization as an image file's."""
    import torch
    from ibnorm.lab.data.hf import HFImageData
    from ibnorm.lab.data.images import center
    data = HFImageData(_image_dataset(tmp_path / "hf"), 24)
    rows = datasets.load_from_disk(str(tmp_path / "hf"))
    want = center(rows["validation"][2]["img"].convert("RGB"), 24)
    assert torch.equal(data.test_x[2:3][0], torch.from_numpy(want))
    assert data.train_y.tolist() == rows["train"]["label"]


@pytest.mark.parametrize("case, words", [("one_class", "at least 2"), ("no_val", "needs a train split and one of"),
                                         ("text_only", "needs an image column and a label column")])
def test_bad_saved_image_datasets_are_one_line(tmp_path, capsys, case, words):
    path = tmp_path / "hf"
    if case == "one_class":
        _image_dataset(path, names=("only",))
    elif case == "no_val":
        imgs, labels = _images(4, [0, 1, 0, 1], 0)
        datasets.Dataset.from_dict({"image": imgs, "label": labels}).save_to_disk(str(path))
    else:
        datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
                              for s in ("train", "validation")}).save_to_disk(str(path))
    capsys.readouterr()
    assert main([*ARGS, "--data", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err


def _text_dataset(path, with_val=True):
    train = ["It is a truth universally acknowledged.", "Emma Woodhouse, handsome, clever, and rich."]
    splits = {"train": datasets.Dataset.from_dict({"body": train})}
    if with_val:
        splits["validation"] = datasets.Dataset.from_dict({"body": ["The family of Dashwood."]})
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return train


@pytest.mark.parametrize("tokenizer", ["gpt2", "byte"])
def test_prepare_text_reads_a_saved_text_column(tmp_path, tokenizer):
    from ibnorm.lab.data import gpt2_encoding
    train = _text_dataset(tmp_path / "hf")
    assert main(["prepare-text", str(tmp_path / "hf"), "--out", str(tmp_path / "tok"), "--text-column", "body",
                 "--tokenizer", tokenizer, "--workers", "2", "--no-progress"]) == 0
    ids = np.fromfile(tmp_path / "tok" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "tok" / "val.bin", dtype=np.uint16)
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["val_split"] == "validation" and meta["text_column"] == "body"
    if tokenizer == "byte":
        assert ids.astype(np.uint8).tobytes().decode() == "".join(t + "\n" for t in train)
        assert val.astype(np.uint8).tobytes().decode() == "The family of Dashwood.\n"
    else:
        enc = gpt2_encoding()
        assert enc.decode(ids.tolist()) == "".join(t + "<|endoftext|>" for t in train)  # row order kept over shards
        assert enc.decode(val.tolist()) == "The family of Dashwood.<|endoftext|>"


def test_saved_text_without_a_validation_split_takes_a_fraction_and_bad_columns_are_one_line(tmp_path, capsys):
    _text_dataset(tmp_path / "hf", with_val=False)
    assert main(["prepare-text", str(tmp_path / "hf"), "--out", str(tmp_path / "tok"), "--text-column", "body",
                 "--tokenizer", "byte", "--val-fraction", "0.25", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert meta["val_split"] == "fraction" and meta["val_tokens"] == round(0.25 * (meta["train_tokens"] + meta["val_tokens"]))
    capsys.readouterr()
    assert main(["prepare-text", str(tmp_path / "hf"), "--out", str(tmp_path / "tok2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--text-column 'text' is not a column" in err and "body" in err and "\n" not in err
    # an LM pointed at the saved text itself is told to tokenize it first
    assert main(["train", "--model", "gpt2-mini", "--data", str(tmp_path / "hf"), "--steps", "1", "--no-progress"]) == 2
    assert "ibnorm prepare-text" in capsys.readouterr().err
