"""Every setting ibnorm reads from the environment, read in this one place, once, at import.

| variable              | values                                    | what it sets                                          |
|-----------------------|-------------------------------------------|-------------------------------------------------------|
| ``IBNORM_IMPL``       | ``auto`` (default) or one of :data:`IMPLS` | ``impl`` of layers built with ``impl=None``          |
| ``IBNORM_CPU_EXT``    | ``1`` (default), ``0``                     | ``0``: never build or use the C++ CPU kernel          |
| ``IBNORM_DEVICE``     | ``auto`` (default), ``cpu``, ``cuda``      | the lab trainer's device (``auto``: CUDA if present)  |
| ``IBNORM_DIST_TIMEOUT`` | seconds, default 120                     | bound on the lab trainer's collectives and rendezvous |
| ``IBNORM_WRITE_TIMEOUT`` | seconds, default 3600                   | bound on the wait behind rank 0 writing a checkpoint  |
| ``IBNORM_DATA_DIR``   | a folder                                  | where the lab looks for unpacked Debian data first    |

A program that changes one of them after import calls :func:`reload`. Layers resolve their ``impl``
when they are built, so a forward call never reads the environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

# What can run a layer: ``auto`` picks the fastest kernel that supports the input (Triton on CUDA, the C++
# kernel on CPU, else the autograd Function); the others name one implementation and refuse inputs it
# cannot run.
IMPLS = ("auto", "cpu", "triton", "autograd", "reference")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Settings:
    impl: str = "auto"
    cpu_ext: bool = True
    device: str = "auto"
    dist_timeout_s: float = 120.0
    write_timeout_s: float = 3600.0
    data_dir: Optional[str] = None


def _choice(name: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"environment variable {name} must be one of {allowed}; got {value!r}")
    return value


def from_env() -> Settings:
    env = os.environ
    def seconds(name: str, default: str) -> float:
        try:
            return float(env.get(name, default))
        except ValueError:
            raise ValueError(f"environment variable {name} must be a number of seconds; got {env[name]!r}") from None
    timeout = seconds("IBNORM_DIST_TIMEOUT", "120")
    return Settings(impl=_choice("IBNORM_IMPL", env.get("IBNORM_IMPL", "auto"), IMPLS),
                    cpu_ext=_choice("IBNORM_CPU_EXT", env.get("IBNORM_CPU_EXT", "1"), ("0", "1")) == "1",
                    device=_choice("IBNORM_DEVICE", env.get("IBNORM_DEVICE", "auto"), DEVICES),
                    dist_timeout_s=timeout, write_timeout_s=seconds("IBNORM_WRITE_TIMEOUT", "3600"),
                    data_dir=env.get("IBNORM_DATA_DIR") or None)


settings: Settings = from_env()


def reload() -> Settings:
    """Read the environment again (after a program or a test changed it)."""
    global settings
    settings = from_env()
    return settings


def resolve_impl(impl: Optional[str]) -> str:
    """A layer's ``impl`` argument as it will run: ``None`` takes ``IBNORM_IMPL`` (default ``auto``)."""
    if impl is None:
        return settings.impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be None or one of {IMPLS}; got {impl!r}")
    return impl
