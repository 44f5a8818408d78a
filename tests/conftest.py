import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

OPS = ["power", "log", "tanh"]
# Strengths inside each op's range that are far from the identity (and not 0.5, the default).
STRENGTHS = {"power": [0.3, 0.7], "log": [0.4, 2.0], "tanh": [0.3, 1.5]}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Skips that CI must not take in silence. A skip whose reason carries a tag ("[data] ...") fails the test instead
# when IBNORM_REQUIRE_<TAG>=1; .ci/run sets them all. Tags: data (the offline datasets), ext (the C++ kernel),
# triton (the Triton interpreter), deps (the lab's optional packages).
REQUIRE_TAGS = ("data", "ext", "triton", "deps")


def required(tag: str) -> bool:
    return os.environ.get(f"IBNORM_REQUIRE_{tag.upper()}") == "1"


def skip_reason(tag: str, reason: str) -> str:
    return f"[{tag}] {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    tags = [t for t in REQUIRE_TAGS if f"[{t}]" in reason or (t == "deps" and "could not import" in reason)]
    for tag in tags:
        if required(tag):
            report.outcome = "failed"
            report.longrepr = f"IBNORM_REQUIRE_{tag.upper()}=1, but this test was skipped: {reason}"
