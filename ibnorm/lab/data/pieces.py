"""The parallel, streaming part of ``ibnorm prepare-text``, shared by text files (:mod:`.tokens`) and saved Hugging Face
datasets (:mod:`.hf`): workers tokenize one piece at a time into scratch files and hand back only counts, so that no
process holds the corpus."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

CHUNK_BYTES = 32 << 20  # the text a worker holds at once


def encode_text(text: str, tokenizer: str) -> np.ndarray:
    """``text``'s token ids as uint16: its UTF-8 bytes, or GPT-2's BPE."""
    if tokenizer == "byte":
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    from . import gpt2_encoding
    return np.asarray(gpt2_encoding().encode_ordinary(text), dtype=np.uint16)


def save_ids(ids: np.ndarray, scratch: str) -> int:
    """A worker's tokens to its scratch file; the main process gets only the count."""
    ids.astype(np.uint16).tofile(scratch)
    return len(ids)


def run_pieces(fn: Any, jobs: list, workers: int, progress: bool, unit: str) -> list[int]:
    """``fn`` over ``jobs`` in worker processes (0 = one per CPU), in order, with a progress bar: the token counts."""
    from multiprocessing import get_context
    from tqdm import tqdm
    n = min(workers or os.cpu_count() or 1, len(jobs))
    with get_context("spawn").Pool(n) as pool:
        return list(tqdm(pool.imap(fn, jobs), total=len(jobs), desc="tokenizing", unit=unit, disable=not progress))


def train_takes(counts: list[int], val_fraction: float) -> list[int]:
    """How many leading tokens of each piece of one document go to training, when its last ``val_fraction`` of
    tokens is validation."""
    left = int(round(sum(counts) * (1 - val_fraction)))
    takes = []
    for c in counts:
        takes.append(min(c, left))
        left -= takes[-1]
    return takes
