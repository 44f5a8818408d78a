"""The user's own token data: ``ibnorm prepare-text`` round trip, memory-mapped training, and bad data named in one
line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from ibnorm.lab.cli import main

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune — ünïcödé.\n" * 60


@pytest.mark.parametrize("tokenizer", ["byte", "gpt2"])
def test_prepare_text_round_trip(tmp_path, tokenizer):
    from ibnorm.lab.data import gpt2_encoding
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text(TEXT)
    (tmp_path / "src" / "b.txt").write_text(TEXT.upper())
    assert main(["prepare-text", str(tmp_path / "src"), "--out", str(tmp_path / "tok"), "--tokenizer", tokenizer,
                 "--workers", "2", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    train = np.fromfile(tmp_path / "tok" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "tok" / "val.bin", dtype=np.uint16)
    assert meta["tokenizer"] == tokenizer and meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    decode = (lambda ids: bytes(ids.astype(np.uint8))) if tokenizer == "byte" else \
        (lambda ids: gpt2_encoding().decode_bytes(ids.tolist()))
    # the end of each file is validation: train = a[:cut_a] + b[:cut_b], val = a[cut_a:] + b[cut_b:]
    ids_a = _ids(TEXT, tokenizer)
    cut_a = int(round(len(ids_a) * 0.9))
    a_train, b_train = train[:cut_a], train[cut_a:]
    a_val, b_val = val[:len(ids_a) - cut_a], val[len(ids_a) - cut_a:]
    assert (decode(a_train) + decode(a_val)).decode() == TEXT
    assert (decode(b_train) + decode(b_val)).decode() == TEXT.upper()


# Places where cutting would change GPT-2's tokens: runs of newlines, spaces or CRs around them, non-ASCII spaces.
AWKWARD = ("Chapter 1\n\n\nIt is a truth  \n  universally acknowledged,\r\nthat a single man\u00a0\nin possession"
           "\n\u3000of a good fortune — ünïcödé\nmust be in want of a wife.\n 's\n'll\n123\n4\n don't  stop. x 's"
           " 'll  a\t b\r\n") * 40
CRLF = "It is a truth universally acknowledged,\r\nthat a single man in possession\r\n\r\nof a fortune.\r\n" * 40


@pytest.mark.parametrize("tokenizer", ["byte", "gpt2"])
def test_prepare_text_streams_a_file_in_pieces_with_the_tokens_of_the_whole(tmp_path, tokenizer):
    """A file is tokenized in pieces of about chunk_bytes (the memory it needs), cut only where the tokens of the
    whole file cannot change: train + val is the whole file's tokens, cut at the same place."""
    from ibnorm.lab.data.tokens import prepare_text, text_pieces
    src = tmp_path / "a.txt"
    src.write_text(AWKWARD, encoding="utf-8")
    pieces = text_pieces(src, 200)
    raw = src.read_bytes()
    assert len(pieces) > 10 and pieces[0][0] == 0 and pieces[-1][1] == len(raw)
    assert all(a == b for (_, a), (b, _) in zip(pieces, pieces[1:]))  # contiguous, nothing lost
    from ibnorm.lab.data.tokens import encode_text
    for text in (AWKWARD, CRLF):  # CRLF: no newline between two printable characters, cut before words
        src.write_text(text, encoding="utf-8", newline="")
        raw, whole = src.read_bytes(), encode_text(text, tokenizer)
        assert len(text_pieces(src, 200)) > 10
        for chunk in range(20, 400, 3):  # cuts landing everywhere in the text
            parts = [encode_text(raw[a:b].decode(), tokenizer) for a, b in text_pieces(src, chunk)]
            assert np.array_equal(np.concatenate(parts), whole), chunk
    src.write_text(AWKWARD, encoding="utf-8")
    whole = encode_text(AWKWARD, tokenizer)
    (tmp_path / "tok" / ".prepare-text-killed").mkdir(parents=True)  # the scratch of a run killed before
    (tmp_path / "tok" / ".prepare-text-killed" / "0.bin").write_bytes(b"\0" * 64)
    meta = prepare_text(src, tmp_path / "tok", tokenizer, 0.1, workers=2, progress=False, chunk_bytes=200)
    train = np.fromfile(tmp_path / "tok" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "tok" / "val.bin", dtype=np.uint16)
    cut = int(round(len(whole) * 0.9))
    assert np.array_equal(train, whole[:cut]) and np.array_equal(val, whole[cut:])
    assert meta["train_tokens"] == cut and not list((tmp_path / "tok").glob(".prepare-text-*"))  # no scratch left


def _ids(text, tokenizer):
    from ibnorm.lab.data import gpt2_encoding
    return text.encode() if tokenizer == "byte" else gpt2_encoding().encode_ordinary(text)


def _folder(path, train, val, meta=None):
    path.mkdir(parents=True, exist_ok=True)
    for name, data in (("train.bin", train), ("val.bin", val)):
        (path / name).write_bytes(data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint16).tobytes())
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))
    return path


TRAIN = ["train", "--model", "llama-mini", "--steps", "2", "--eval-every", "2", "--eval-batches", "1",
         "--batch-size", "2", "--context", "16", "--width", "16", "--depth", "1", "--no-progress"]


@pytest.mark.parametrize("case, words", [
    ("odd", "an odd number: not a file of uint16 token ids"),
    ("big_id", "holds token id 300, at or above the vocabulary (256)"),
    ("no_val", "val.bin is missing"),
    ("empty_train", "train.bin holds 0 tokens"),
    ("not_a_folder", "is not a folder"),
])
def test_bad_token_data_is_one_line_with_exit_code_2(tmp_path, capsys, case, words):
    good = list(np.arange(200) % 256)
    meta = {"tokenizer": "byte", "vocab_size": 256}
    folder = tmp_path / "data"
    if case == "odd":
        _folder(folder, np.asarray(good, dtype=np.uint16).tobytes() + b"x", good, meta)
    elif case == "big_id":
        _folder(folder, [300] * 200, good, meta)
    elif case == "no_val":
        _folder(folder, good, good, meta)
        (folder / "val.bin").unlink()
    elif case == "empty_train":
        _folder(folder, b"", good, meta)
    else:
        folder.write_text("x")
    assert main([*TRAIN, "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err


def test_a_folder_without_meta_holds_gpt2_ids(tmp_path):
    from ibnorm.lab.data.tokens import token_folder
    data = token_folder(_folder(tmp_path / "d", [50000] * 64, [1] * 64))
    assert data.vocab_size == 50257


def test_a_large_train_bin_trains_with_small_memory(tmp_path):
    """A sparse 2 GB train.bin trains with about the resident memory of a small one: it is mapped, never read."""
    code = ("import resource, sys; from ibnorm.lab.cli import main; "
            "main(sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    rss = {}
    for name, size in (("small", 4096), ("large", 1 << 30)):
        folder = _folder(tmp_path / name, b"", list(np.arange(500) % 256), {"tokenizer": "byte", "vocab_size": 256})
        with open(folder / "train.bin", "wb") as f:
            f.truncate(size * 2)  # zeros, sparse on disk: 2 GB for "large"
        out = subprocess.run([sys.executable, "-c", code, *TRAIN, "--data", str(folder), "--out",
                              str(tmp_path / f"run-{name}")], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        rss[name] = int(out.stdout.strip().splitlines()[-1])  # kB
    assert rss["large"] - rss["small"] < 100_000, rss  # far below the file's 2 GB
