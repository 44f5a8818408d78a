"""Token data of the user's own: nanoGPT's format, ``train.bin`` and ``val.bin`` of uint16 token ids, and an optional
``meta.json`` (``tokenizer``, ``vocab_size``, token counts); ``ibnorm prepare-text`` writes it.

The files are memory-mapped and never read whole: a batch reads its windows' pages, so a 2 GB ``train.bin`` trains
with the memory of a 2 MB one. Token ids are checked batch by batch, as they are read. Bad data is one clear line:
a ``.bin`` of odd size, a missing or empty split, an id at or above the vocabulary.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

GPT2_VOCAB = 50257  # a folder without meta.json holds GPT-2 ids, as nanoGPT's prepare scripts write them


class MappedTokens:
    """A token stream on disk, indexed like a tensor (``stream[idx]`` with an index tensor, or a slice): only the
    indexed tokens are read, and each read is checked against the vocabulary."""

    def __init__(self, path: Path, vocab_size: int, array: Optional[np.ndarray] = None):
        self.path, self.vocab_size = Path(path), vocab_size
        self.array = np.memmap(path, dtype=np.uint16, mode="r") if array is None else array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, idx: Union[torch.Tensor, slice]) -> Union[torch.Tensor, "MappedTokens"]:
        if isinstance(idx, slice):
            return MappedTokens(self.path, self.vocab_size, self.array[idx])
        ids = torch.from_numpy(self.array[idx.numpy()].astype(np.int64))
        if ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"{self.path} holds token id {int(ids.max())}, at or above the vocabulary "
                             f"({self.vocab_size}); fix meta.json's vocab_size or the tokenizer that wrote the file")
        return ids


def read_meta(folder: Path) -> dict:
    path = folder / "meta.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    vocab = meta.get("vocab_size", GPT2_VOCAB)
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 < vocab <= 65536:
        raise ValueError(f"{path}: vocab_size must be an int in (0, 65536] (uint16 ids); got {vocab!r}")
    return meta


def token_folder(folder: Union[str, Path], min_tokens: int = 2):
    """``TextData`` over ``folder``'s ``train.bin`` and ``val.bin`` (memory-mapped)."""
    from . import TextData
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data: {folder} is not a folder (it must hold train.bin and val.bin, or train/ and val/ "
                         "image folders)")
    meta = read_meta(folder)
    vocab = meta.get("vocab_size", GPT2_VOCAB)
    streams = []
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        if not path.exists():
            raise ValueError(f"data: {path} is missing (a token folder holds train.bin and val.bin)")
        size = os.path.getsize(path)
        if size % 2:
            raise ValueError(f"data: {path} has {size} bytes, an odd number: not a file of uint16 token ids")
        if size // 2 < min_tokens:
            raise ValueError(f"data: {path} holds {size // 2} tokens; a split needs at least {min_tokens}")
        streams.append(MappedTokens(path, vocab))
    return TextData(streams[0], streams[1], vocab)


# ---- ibnorm prepare-text ----------------------------------------------------------------------------------------

def _encode(args: tuple[str, str]) -> np.ndarray:
    path, tokenizer = args
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if tokenizer == "byte":
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    from . import gpt2_encoding
    return np.asarray(gpt2_encoding().encode_ordinary(text), dtype=np.uint16)


def prepare_text(source: Union[str, Path], out: Union[str, Path], tokenizer: str = "gpt2", val_fraction: float = 0.1,
                 workers: int = 0, progress: bool = True, text_column: str = "text") -> dict:
    """Tokenize a text file, or every ``*.txt`` under a folder (sorted), into ``out/{train,val}.bin`` and
    ``out/meta.json``: the last ``val_fraction`` of each file's tokens is validation. Files are tokenized in
    parallel (``workers`` processes; 0 = one per CPU). A dataset saved by Hugging Face ``datasets`` gives its
    ``text_column`` instead (:mod:`ibnorm.lab.data.hf`). Returns the meta."""
    from multiprocessing import get_context
    from tqdm import tqdm
    from . import TOKENIZERS
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1); got {val_fraction}")
    source = Path(source)
    from .hf import encode_saved_text, is_saved_dataset
    if source.is_dir() and is_saved_dataset(source):
        train_ids, val_ids, read = encode_saved_text(source, text_column, tokenizer, val_fraction, workers, progress)
        return _write_tokens(source, out, tokenizer, train_ids, val_ids, {**read, "val_fraction": val_fraction})
    files = [source] if source.is_file() else sorted(source.rglob("*.txt")) if source.is_dir() else []
    if not files:
        raise ValueError(f"prepare-text: {source} is not a text file or a folder with *.txt files")
    jobs = [(str(f), tokenizer) for f in files]
    n = workers or os.cpu_count() or 1
    with get_context("spawn").Pool(min(n, len(jobs))) as pool:
        encoded = list(tqdm(pool.imap(_encode, jobs), total=len(jobs), desc="tokenizing", unit="file",
                            disable=not progress))
    train, val = [], []
    for ids in encoded:
        cut = int(round(len(ids) * (1 - val_fraction)))
        train.append(ids[:cut])
        val.append(ids[cut:])
    return _write_tokens(source, out, tokenizer, np.concatenate(train), np.concatenate(val),
                         {"files": len(files), "val_fraction": val_fraction})


def _write_tokens(source: Path, out: Union[str, Path], tokenizer: str, train_ids: np.ndarray, val_ids: np.ndarray,
                  read: dict) -> dict:
    from ...atomic import atomic_write_bytes, atomic_write_json
    from . import TOKENIZERS
    if not len(train_ids) or not len(val_ids):
        raise ValueError(f"prepare-text: {source} gives {len(train_ids)} training and {len(val_ids)} validation "
                         "tokens; both splits need some")
    out = Path(out)
    atomic_write_bytes(out / "train.bin", train_ids.astype(np.uint16).tobytes())
    atomic_write_bytes(out / "val.bin", val_ids.astype(np.uint16).tobytes())
    meta = {"tokenizer": tokenizer, "vocab_size": TOKENIZERS[tokenizer], "train_tokens": int(len(train_ids)),
            "val_tokens": int(len(val_ids)), **read}
    atomic_write_json(out / "meta.json", meta)
    return meta
