#!/usr/bin/env bash
# Separate virtualenv for the RecBole peer (never part of the main project's dependencies).
# Order matters: torch==2.13.0 first (the local CPU wheel; any other torch spec pulls GBs of CUDA),
# then recbole without its dependency pins, then those dependencies by hand (colorlog/colorama at
# the versions recbole 1.2.1 pins). `ray` is deliberately not
# installed: only recbole.quick_start / hyper-parameter search need it; sasrec.py drives Trainer itself.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${RECBOLE_VENV:-$ROOT/.venv-recbole}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install torch==2.13.0
$PIP install --no-deps recbole==1.2.1
$PIP install "numpy==1.26.*" "pandas==2.2.*" scipy tqdm "colorlog==4.7.2" "colorama==0.4.4" scikit-learn pyyaml \
  tensorboard thop tabulate plotly texttable psutil
# Nothing may have replaced the CPU torch.
"$VENV/bin/python" - <<'PY'
import torch, recbole, numpy
print("torch", torch.__version__, "recbole", recbole.__version__, "numpy", numpy.__version__)
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert recbole.__version__ == "1.2.1", recbole.__version__
PY
