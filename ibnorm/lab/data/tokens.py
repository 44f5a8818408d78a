"""Token data of the user's own: nanoGPT's format, ``train.bin`` and ``val.bin`` of uint16 token ids, and an optional
``meta.json`` (``tokenizer``, ``vocab_size``, token counts); ``ibnorm prepare-text`` writes it.

The files are memory-mapped and never read whole: a batch reads its windows' pages, so a 2 GB ``train.bin`` trains
with the memory of a 2 MB one. Token ids are checked batch by batch, as they are read. Bad data is one clear line:
a ``.bin`` of odd size, a missing or empty split, an id at or above the vocabulary.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .pieces import CHUNK_BYTES, encode_text, run_pieces, save_ids, train_takes

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
# The corpus is never held whole: files are cut into pieces of about CHUNK_BYTES, each worker process tokenizes one
# piece at a time into a scratch file beside the output, and train.bin and val.bin are then streamed from those.

# Where GPT-2's pre-tokenizer always splits, whatever follows, so that the pieces tokenize exactly as the whole file:
# after a newline between two printable ASCII characters (a lone newline is its own piece), or before a space that
# follows a printable ASCII character and precedes an ASCII letter (" word" is a piece, and the one before it ends at
# that character; this also cuts CRLF text and text without newlines). UTF-8 never uses these bytes inside a character.
_SAFE_CUT = re.compile(rb"[\x21-\x7e]\n(?=[\x21-\x7e])|[\x21-\x7e](?= [A-Za-z])")


def text_pieces(path: Path, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering ``path``, each about ``chunk_bytes`` or more, cut only where the
    tokenization cannot change (a file without such a place is one piece)."""
    size = path.stat().st_size
    cuts, window = [0], 1 << 16
    with open(path, "rb") as f:
        at = chunk_bytes
        while at < size:
            f.seek(at - 1)  # from one byte back, so that the character before a newline is seen
            found = None
            while found is None:
                block = f.read(window + 2)
                if len(block) < 3:
                    break
                m = _SAFE_CUT.search(block)
                if m:
                    found = f.tell() - len(block) + m.end()
                else:
                    f.seek(-2, os.SEEK_CUR)  # a match may straddle two blocks
            if found is None:  # no safe place left: the rest is one piece
                break
            cuts.append(found)
            at = found + chunk_bytes
    return list(zip(cuts, cuts[1:] + [size]))


def _encode_piece(args: tuple[str, int, int, str, str]) -> int:
    path, start, end, tokenizer, scratch = args
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode("utf-8", errors="replace")
    return save_ids(encode_text(text, tokenizer), scratch)


def prepare_text(source: Union[str, Path], out: Union[str, Path], tokenizer: str = "gpt2", val_fraction: float = 0.1,
                 workers: int = 0, progress: bool = True, text_column: str = "text",
                 chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Tokenize a text file, or every ``*.txt`` under a folder (sorted), into ``out/{train,val}.bin`` and
    ``out/meta.json``: the last ``val_fraction`` of each file's tokens is validation. Pieces of about ``chunk_bytes``
    are tokenized in parallel (``workers`` processes; 0 = one per CPU), with the memory of a piece per worker, and give
    the same tokens as whole files would. A dataset saved by Hugging Face ``datasets`` gives its ``text_column``
    instead (:mod:`ibnorm.lab.data.hf`). Returns the meta."""
    from . import TOKENIZERS
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1); got {val_fraction}")
    source = Path(source)
    from .hf import encode_saved_text, is_saved_dataset
    saved = source.is_dir() and is_saved_dataset(source)
    files = [] if saved else [source] if source.is_file() else sorted(source.rglob("*.txt")) if source.is_dir() else []
    if not saved and not files:
        raise ValueError(f"prepare-text: {source} is not a text file or a folder with *.txt files")
    Path(out).mkdir(parents=True, exist_ok=True)
    for stale in Path(out).glob(".prepare-text-*"):  # the scratch of a run that was killed: nothing to resume from
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-text-", dir=out) as scratch:  # beside the output: its disk
        if saved:
            pieces, read = encode_saved_text(source, text_column, tokenizer, val_fraction, workers, progress, scratch)
            return _write_tokens(source, out, tokenizer, pieces, {**read, "val_fraction": val_fraction})
        by_file = [text_pieces(f, chunk_bytes) for f in files]
        jobs = []
        for f, ranges in zip(files, by_file):
            for a, b in ranges:
                jobs.append((str(f), a, b, tokenizer, os.path.join(scratch, f"{len(jobs)}.bin")))
        counts = run_pieces(_encode_piece, jobs, workers, progress, "piece")
        pieces, i = [], 0
        for ranges in by_file:  # the end of each file is validation
            mine = counts[i:i + len(ranges)]
            for job, n, take in zip(jobs[i:i + len(ranges)], mine, train_takes(mine, val_fraction)):
                pieces.append((job[4], n, take))
            i += len(ranges)
        return _write_tokens(source, out, tokenizer, pieces, {"files": len(files), "val_fraction": val_fraction})


def _write_tokens(source: Path, out: Union[str, Path], tokenizer: str, pieces: list[tuple[str, int, int]],
                  read: dict) -> dict:
    """``train.bin`` from each piece's first ``take`` tokens and ``val.bin`` from the rest, in piece order, streamed
    from the scratch files; ``pieces`` holds (scratch file, tokens, take)."""
    from ...atomic import atomic_write_chunks, atomic_write_json
    from . import TOKENIZERS
    n_train = sum(take for _, _, take in pieces)
    n_val = sum(n - take for _, n, take in pieces)
    if not n_train or not n_val:
        raise ValueError(f"prepare-text: {source} gives {n_train} training and {n_val} validation tokens; both splits "
                         "need some")

    def stream(val: bool):
        block = 1 << 22  # tokens per write
        for path, n, take in pieces:
            lo, hi = (take, n) if val else (0, take)
            if hi > lo:
                ids = np.memmap(path, dtype=np.uint16, mode="r")
                for at in range(lo, hi, block):
                    yield ids[at:min(hi, at + block)].tobytes()
                del ids

    out = Path(out)
    atomic_write_chunks(out / "train.bin", stream(False))
    atomic_write_chunks(out / "val.bin", stream(True))
    meta = {"tokenizer": tokenizer, "vocab_size": TOKENIZERS[tokenizer], "train_tokens": n_train,
            "val_tokens": n_val, **read}
    atomic_write_json(out / "meta.json", meta)
    return meta
