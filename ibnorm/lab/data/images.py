"""Images of the user's own, in the ImageNet layout: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (JPEG or PNG).

The class names are the folder names (sorted), the same for both splits. Images are decoded with Pillow when a batch
needs them: by the worker processes of a torch DataLoader, a batch or more ahead of the model, in training
(``Task.batches``) and evaluation (``Task.evaluate``); with ``--workers 0``, in the process itself by a pool of threads
(Pillow releases the GIL while it decodes).
Training takes the standard augmentation, a random-resized crop (area 8-100%, aspect 3/4-4/3) and a horizontal flip,
drawn from (seed, step) like every batch here; evaluation resizes the shorter side to ``image_size`` and crops the
centre. Both normalize with ImageNet's channel mean and std.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

EXTENSIONS = {".jpg", ".jpeg", ".png"}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _split(folder: Path, split: str, classes: Optional[list[str]]) -> tuple[list[str], list[tuple[Path, int]]]:
    root = folder / split
    if not root.is_dir():
        raise ValueError(f"data: {root} is missing (an image folder holds train/<class>/ and val/<class>/)")
    names = sorted(d.name for d in root.iterdir() if d.is_dir())
    if classes is None:
        if len(names) < 2:
            raise ValueError(f"data: {root} has {len(names)} class folder(s); classification needs at least 2")
        classes = names
    elif set(names) - set(classes):
        raise ValueError(f"data: {root} has classes that train/ has not: {', '.join(sorted(set(names) - set(classes)))}")
    items = [(p, classes.index(c)) for c in names for p in sorted((root / c).iterdir())
             if p.suffix.lower() in EXTENSIONS]
    if not items:
        raise ValueError(f"data: {root} holds no JPEG or PNG image")
    return classes, items


def _open(path: Path):
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # a truncated or foreign file: name it, in one line
        raise ValueError(f"data: cannot read the image {path} ({type(e).__name__})") from None


def _to_tensor(im, size: int) -> np.ndarray:
    a = (np.asarray(im.resize((size, size), resample=2), dtype=np.float32) / 255.0 - MEAN) / STD  # 2: bilinear
    return a.transpose(2, 0, 1)


def center(im, size: int) -> np.ndarray:
    """A PIL image resized (shorter side to ``size``) and centre-cropped, normalized, channels first."""
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample=2)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return _to_tensor(im.crop((left, top, left + size, top + size)), size)


def augmented(im, size: int, rng: np.random.Generator) -> np.ndarray:
    """A PIL image's random-resized crop and flip from ``rng``, normalized, channels first."""
    w, h = im.size
    for _ in range(10):  # the random-resized crop; after 10 misses, the whole image
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = im.crop((left, top, left + cw, top + ch))
            break
    a = _to_tensor(im, size)
    return a[:, :, ::-1].copy() if rng.random() < 0.5 else a


class LazyImages:
    """Images decoded when indexed: ``images[slice or index tensor]`` is a float tensor ``[B, 3, size, size]``.
    ``source`` opens image ``i`` as an RGB PIL image (naming the file or row in a one-line ValueError if it cannot)."""

    def __init__(self, source: "ImageSource", size: int, threads: int):
        self.source, self.size, self.threads = source, size, threads
        self._pool: Optional[tuple[int, ThreadPoolExecutor]] = None

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self) -> dict:  # a pool's threads do not cross into a worker process
        return {**self.__dict__, "_pool": None}

    def _map(self, fn, items) -> list:
        from torch.utils.data import get_worker_info
        if get_worker_info() is not None or self.threads <= 1:  # a DataLoader worker is already one of many
            return [fn(a) for a in items]
        # One pool per process: a pool copied by fork has no threads and would never run a task.
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(self.threads))
        return list(self._pool[1].map(fn, items))

    def __getitem__(self, idx: Union[slice, torch.Tensor]) -> torch.Tensor:
        picks = range(len(self.source))[idx] if isinstance(idx, slice) else idx.tolist()
        return torch.from_numpy(np.stack(self._map(lambda i: center(self.source.open(i), self.size), picks)))

    def augmented(self, idx: torch.Tensor, seed: int, first: int = 0) -> torch.Tensor:
        """The augmented images ``idx``, the ``first``-th onward of a batch: each image's crop and flip come from
        (seed, its place in the whole batch), so a rank decoding only its slice gets the same pixels."""
        picks = idx.tolist()
        rngs = [np.random.default_rng([seed, first + k]) for k in range(len(picks))]
        return torch.from_numpy(np.stack(self._map(
            lambda a: augmented(self.source.open(a[0]), self.size, a[1]), list(zip(picks, rngs)))))


class ImageFiles:
    """An image folder's files as an image source."""

    def __init__(self, items: list[tuple[Path, int]]):
        self.paths = [p for p, _ in items]

    def __len__(self) -> int:
        return len(self.paths)

    def open(self, i: int):
        return _open(self.paths[i])


ImageSource = Any  # anything with __len__ and open(i) -> an RGB PIL image (ImageFiles; hf.ImageRows)


class ImageFolderData:
    """``train_x``/``test_x`` (lazy images), ``train_y``/``test_y`` (labels) and ``classes``, like VisionData."""

    def __init__(self, folder: Union[str, Path], image_size: int, threads: int = 0):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"data: {folder} is not a folder (it must hold train/ and val/ image folders, or "
                             "train.bin and val.bin tokens)")
        self.classes, train = _split(folder, "train", None)
        _, val = _split(folder, "val", self.classes)
        threads = threads or min(8, os.cpu_count() or 1)
        self.train_x = LazyImages(ImageFiles(train), image_size, threads)
        self.test_x = LazyImages(ImageFiles(val), image_size, threads)
        self.train_y = torch.tensor([c for _, c in train])
        self.test_y = torch.tensor([c for _, c in val])
