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


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (another model may pick other matmul kernels)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def math_libraries() -> dict[str, Optional[str]]:
    """The MKL and oneDNN versions torch was built with (from ``torch.__config__.show()``)."""
    import re
    text = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", text)
    dnn = re.search(r"MKL-DNN (v[^\s]+)", text)
    return {"mkl": mkl.group(1) if mkl else None, "onednn": dnn.group(1) if dnn else None}


def kernel_path() -> str:
    """Which IBNorm kernel a CPU float32 layer runs here: the C++ kernel once built, else the autograd one."""
    from ..kernels import cpu
    if cpu._module is not None:
        return "cpp"
    return f"autograd ({cpu._failed})" if cpu._failed else "none loaded (no IBNorm layer ran)"


def code_commit() -> Optional[str]:
    """The git commit of the ibnorm code that ran (a sweep's worktree pins one), or None outside a checkout."""
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Where and with what a result was made: versions (torch, transformers, numpy, MKL, oneDNN), the CPU model and
    capability, the IBNorm kernel that ran, threads, allocator: what decides a run's numbers across machines."""
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "transformers": _version("transformers"), "numpy": _version("numpy"), **math_libraries(),
            "kernel": kernel_path(), "code_commit": code_commit(),
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
