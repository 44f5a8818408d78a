"""What the lab writes beside its results: CSV tables, provenance, figures; each written atomically."""
from __future__ import annotations

import csv
import io
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch

from ..atomic import atomic_write_bytes, atomic_write_text


def write_csv(path: str | Path, rows: Iterable[dict], columns: Optional[Sequence[str]] = None) -> None:
    """``rows`` as CSV with a header; ``columns`` (default: the first row's keys) picks and orders the fields."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path, ints: Sequence[str] = (), floats: Sequence[str] = ()) -> list[dict]:
    """A CSV written by :func:`write_csv`, with the named columns converted back to numbers."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ints:
            r[k] = int(r[k])
        for k in floats:
            r[k] = float(r[k])
    return rows


def command_line() -> str:
    """The ``ibnorm`` command as typed, to be recorded next to what it wrote."""
    return "ibnorm " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def provenance() -> dict[str, Any]:
    """Where and with what a result was made: versions, machine, CPU capability, threads, allocator."""
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "malloc": "MALLOC_MMAP_MAX_=%s MALLOC_TRIM_THRESHOLD_=%s" % (
                os.environ.get("MALLOC_MMAP_MAX_", "default"), os.environ.get("MALLOC_TRIM_THRESHOLD_", "default"))}


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
