"""IBNORM_REQUIRE_<TAG>=1 turns a tagged skip into a failure, so CI cannot go green with an area skipped."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

TEST = '''
import pytest
from conftest import skip_reason

@pytest.mark.skipif(True, reason=skip_reason("data", "dataset absent"))
def test_marked():
    pass

def test_inline():
    pytest.skip(skip_reason("ext", "no compiler"))

def test_untagged():
    pytest.skip("a skip no switch covers")
'''


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_tagged.py").write_text(TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IBNORM_REQUIRE_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(tmp_path), "-c", str(tmp_path / "pytest.ini")],
                          cwd=tmp_path, env=dict(clean, **env), capture_output=True, text=True, timeout=120)


def test_tagged_skips_fail_only_under_their_switch(tmp_path):
    free = _run(tmp_path)
    assert free.returncode == 0 and "3 skipped" in free.stdout, free.stdout
    data = _run(tmp_path, IBNORM_REQUIRE_DATA="1")
    assert data.returncode != 0 and "IBNORM_REQUIRE_DATA=1, but this test was skipped" in data.stdout, data.stdout
    assert "2 skipped" in data.stdout  # the ext and untagged skips stay skips
    both = _run(tmp_path, IBNORM_REQUIRE_DATA="1", IBNORM_REQUIRE_EXT="1")
    assert both.returncode != 0 and "1 skipped" in both.stdout, both.stdout
