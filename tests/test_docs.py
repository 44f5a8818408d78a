"""The README is the front door: two commands first, two screens at most, and every link it gives resolves."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_fits_on_two_screens_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text) <= 12_000, len(text)
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == ["bash scripts/setup.sh && .venv/bin/ibnorm compare --preset quick",
                        "bash scripts/setup.sh && .venv/bin/python -m pytest -q"]
    assert ".venv/bin/python -m pytest -q" in (REPO / ".ci" / "run").read_text()  # CI runs command 2


def test_setup_installs_the_ibnorm_command_of_this_checkout(tmp_path):
    """Command 1 runs `.venv/bin/ibnorm`: the environment must have that command, and outside the checkout (where the
    source folder is not on sys.path to hide a missing install) `import ibnorm` must find this checkout."""
    command = Path(sys.executable).parent / "ibnorm"
    assert command.is_file(), f"{command} is missing: scripts/setup.sh installs it (pip install --no-deps -e .)"
    where = subprocess.run([sys.executable, "-c", "import ibnorm; print(ibnorm.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-500:]
    assert Path(where.stdout.strip()).resolve().parents[1] == REPO
    help_ = subprocess.run([str(command), "report", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--results-dir" in help_.stdout, help_.stderr[-500:]


def test_every_local_link_in_the_readme_and_docs_resolves():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith("http"):
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_main_job_writes_outside_the_committed_results(tmp_path, monkeypatch):
    from ibnorm.lab.cli import main
    from test_data import needs_fashion
    if needs_fashion.args[0]:
        import pytest
        pytest.skip(needs_fashion.kwargs["reason"])
    monkeypatch.chdir(tmp_path)
    argv = ["compare", "--preset", "quick", "--models", "resnet-mini", "--norms", "base", "--steps", "2",
            "--eval-every", "1", "--eval-examples", "64", "--train-subset", "128", "--no-progress"]
    assert main(argv) == 0
    written = sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file())
    assert set(written) == {"runs"}  # nothing under results/
    name = "quick-models-resnet-mini-norms-1-evalevery1-evalexamples64-steps2-trainsubset128"
    assert (tmp_path / "runs" / name / "table.md").exists()
