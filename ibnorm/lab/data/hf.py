"""Datasets saved with Hugging Face ``datasets``' ``save_to_disk``, an optional dependency (``pip install ibnorm[hf]``).

- **Images**: ``ibnorm train --data DIR`` on a saved ``DatasetDict`` with a ``train`` split, a ``validation`` (or
  ``valid``, ``val``, ``test``) split, an image column (the first ``Image`` feature, else ``image`` or ``img``) and a
  label column (the first ``ClassLabel`` feature, else ``label``). Class names come from the ``ClassLabel`` (else the
  sorted label values). Rows are decoded when a batch needs them, exactly as image files are.
- **Text**: ``ibnorm prepare-text DIR --out TOKENS`` tokenizes a text column (``--text-column``, default ``text``) into
  nanoGPT's ``train.bin``/``val.bin``, in parallel over contiguous shards, each row ended by GPT-2's
  ``<|endoftext|>`` (a newline for the byte tokenizer). Training then memory-maps the tokens, as for any text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

VAL_SPLITS = ("validation", "valid", "val", "test")
INSTALL = "reading it needs Hugging Face datasets: pip install 'ibnorm[hf]' (or pip install datasets)"


def is_saved_dataset(folder: Union[str, Path]) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    folder = Path(folder)
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_saved(folder: Union[str, Path]) -> dict:
    """The splits of a saved dataset, by name (a single saved ``Dataset`` is the split ``train``)."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"data: {folder} is a saved Hugging Face dataset; {INSTALL}") from None
    loaded = datasets.load_from_disk(str(folder))
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def _val_split(splits: dict) -> Optional[str]:
    return next((name for name in VAL_SPLITS if name in splits), None)


# ---- images ------------------------------------------------------------------------------------------------------

class ImageRows:
    """A split's image column as an image source (``open(i)`` is row i's RGB PIL image)."""

    def __init__(self, rows: Any, column: str, split: str):
        self.rows, self.column, self.split = rows, column, split

    def __len__(self) -> int:
        return len(self.rows)

    def open(self, i: int):
        try:
            return self.rows[int(i)][self.column].convert("RGB")
        except Exception as e:  # an undecodable row: name it, in one line
            raise ValueError(f"data: cannot read the image in row {i} of split {self.split} "
                             f"({type(e).__name__})") from None


def _columns(rows: Any, folder: Path) -> tuple[str, str]:
    import datasets
    features = rows.features
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in ("image", "img") if k in features), None)
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or ("label" if "label" in features else None)
    if image is None or label is None:
        raise ValueError(f"data: {folder} needs an image column and a label column (an Image and a ClassLabel "
                         f"feature, or columns named image and label); it has {', '.join(features)}")
    return image, label


class HFImageData:
    """``train_x``/``test_x`` (lazy images), ``train_y``/``test_y`` and ``classes`` from a saved image dataset, like
    :class:`~ibnorm.lab.data.images.ImageFolderData`."""

    def __init__(self, folder: Union[str, Path], image_size: int, threads: int = 0):
        import os

        import datasets
        import torch
        from .images import LazyImages
        folder = Path(folder)
        splits = load_saved(folder)
        val = _val_split(splits)
        if "train" not in splits or val is None:
            raise ValueError(f"data: {folder} needs a train split and one of {', '.join(VAL_SPLITS)}; it has "
                             f"{', '.join(splits) or 'none'}")
        train_rows, val_rows = splits["train"], splits[val]
        if not len(train_rows) or not len(val_rows):
            raise ValueError(f"data: {folder} has an empty split (train {len(train_rows)} rows, {val} {len(val_rows)})")
        image, label = _columns(train_rows, folder)
        feature = train_rows.features[label]
        if isinstance(feature, datasets.ClassLabel):
            self.classes = list(feature.names)
            to_index = lambda values: list(values)  # noqa: E731
        else:
            self.classes = sorted({*train_rows[label], *val_rows[label]}, key=str)
            where = {c: i for i, c in enumerate(self.classes)}
            to_index = lambda values: [where[v] for v in values]  # noqa: E731
        if len(self.classes) < 2:
            raise ValueError(f"data: {folder} has {len(self.classes)} class(es); classification needs at least 2")
        threads = threads or min(8, os.cpu_count() or 1)
        self.train_x = LazyImages(ImageRows(train_rows, image, "train"), image_size, threads)
        self.test_x = LazyImages(ImageRows(val_rows, image, val), image_size, threads)
        self.train_y = torch.tensor(to_index(train_rows[label]))
        self.test_y = torch.tensor(to_index(val_rows[label]))


# ---- text --------------------------------------------------------------------------------------------------------

def _encode_shard(args: tuple[str, str, str, int, int, str, str]) -> int:
    folder, split, column, index, shards, tokenizer, scratch = args
    from .pieces import encode_text, save_ids
    rows = load_saved(folder)[split].shard(num_shards=shards, index=index, contiguous=True)
    if tokenizer == "byte":
        return save_ids(encode_text("".join(t + "\n" for t in rows[column]), "byte"), scratch)
    from . import gpt2_encoding
    enc = gpt2_encoding()
    ids = []
    for t in rows[column]:
        ids.extend(enc.encode_ordinary(t))
        ids.append(enc.eot_token)
    return save_ids(np.asarray(ids, dtype=np.uint16), scratch)


def encode_saved_text(folder: Union[str, Path], column: str, tokenizer: str, val_fraction: float, workers: int,
                      progress: bool, scratch: str) -> tuple[list[tuple[str, int, int]], dict]:
    """The tokens of the train split's column, and of the validation split's when there is one, else the last
    ``val_fraction`` of the train split's, as pieces (scratch file, tokens, how many lead tokens are training) for
    ``tokens._write_tokens``, and what was read. Each worker tokenizes one contiguous shard of rows at a time."""
    import os
    from .pieces import CHUNK_BYTES, run_pieces, train_takes
    folder = Path(folder)
    splits = load_saved(folder)
    if "train" not in splits:
        raise ValueError(f"prepare-text: {folder} has no train split; it has {', '.join(splits) or 'none'}")
    for name, rows in splits.items():
        if column not in rows.features:
            raise ValueError(f"prepare-text: --text-column {column!r} is not a column of split {name} of {folder}; "
                             f"it has {', '.join(rows.features)}")
    val = _val_split(splits)
    n = workers or os.cpu_count() or 1
    jobs = []
    for split in ("train",) + ((val,) if val else ()):
        rows = splits[split]
        # several shards per worker (a steady progress bar), and none much above CHUNK_BYTES of Arrow data (memory)
        shards = max(1, min(len(rows), max(n * 4, rows.data.nbytes // CHUNK_BYTES)))
        jobs += [(str(folder), split, column, i, shards, tokenizer, os.path.join(scratch, f"{len(jobs) + i}.bin"))
                 for i in range(shards)]
    counts = run_pieces(_encode_shard, jobs, workers, progress, "shard")
    train = [(job[6], c) for job, c in zip(jobs, counts) if job[1] == "train"]
    takes = [c for _, c in train] if val else train_takes([c for _, c in train], val_fraction)
    pieces = [(path, c, take) for (path, c), take in zip(train, takes)]
    pieces += [(job[6], c, 0) for job, c in zip(jobs, counts) if job[1] != "train"]
    return pieces, {"hf_dataset": str(folder), "text_column": column, "val_split": val or "fraction"}
