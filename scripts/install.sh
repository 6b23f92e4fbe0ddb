#!/usr/bin/env bash
# Install ragserve and its dependencies into .venv (what `make install` runs).
#
# llama-cpp-python, the local reader's backend, has no wheel on PyPI that runs here, so pip
# compiles llama.cpp: about 4 minutes on 2 cores, most of a first install. Everything else is
# downloads (PyTorch CPU, the 1.1 GB reader in 22 parts, ...), about 100 s. The compile runs
# in the background while those download, instead of after them.
#
# Usage: scripts/install.sh [python]    (CMAKE_ARGS from the environment reach the compile)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
VENV=.venv
PY=$VENV/bin/python

# A full disk otherwise surfaces minutes in as pip's bare "OSError: [Errno 28]". The venv
# takes 3.4 GB (PyTorch, OpenVINO, the 1.1 GB reader in parts) and the first start writes
# about 1.2 GB more to the model cache (the joined reader, the ONNX exports). Checked before a
# first install only: an update of an existing venv needs far less.
NEED_GB=5
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [[ ! -x $PY && $free_kb =~ ^[0-9]+$ ]] && ((free_kb < NEED_GB * 1024 * 1024)); then
    echo "install: only $((free_kb / 1024)) MB free on $(df -P . | awk 'NR == 2 { print $6 }')," \
        "and ragserve needs about $NEED_GB GB (the venv, then the model cache)." >&2
    echo "Free some space there (or clone elsewhere) and run it again." >&2
    exit 1
fi

test -x "$PY" || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip==26.3

# pyproject.toml stays the one list of dependencies: split it into the compiled one, torch
# (installed first, below) and the rest.
mapfile -t DEPS < <("$PY" -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
LLAMA=() OTHERS=()
for dep in "${DEPS[@]}"; do
    case $dep in
        llama-cpp-python*) LLAMA+=("$dep") ;;
        torch*) ;;
        *) OTHERS+=("$dep") ;;
    esac
done

WHEELS=$VENV/wheels
mkdir -p "$WHEELS"
echo "install: compiling ${LLAMA[*]} in the background (about 3-4 minutes on 2 cores)"
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" "${LLAMA[@]}" >"$VENV/llama-build.log" 2>&1 &
build=$!
trap 'kill "$build" 2>/dev/null || true' EXIT  # a failed download stops the compile too

# The compile is the critical path, so the installs below skip byte-compiling (thousands of
# files in torch alone); Python compiles what is imported, once, on first use.
# CPU torch first: asked for later by a dependency, pip would pull a multi-GB CUDA build.
echo "install: PyTorch (CPU)"
"$PY" -m pip install -q --no-compile torch==2.13.0
echo "install: ${#OTHERS[@]} dependencies (the reader model's parts are 1.1 GB)"
"$PY" -m pip install -q --no-compile "${OTHERS[@]}"

echo "install: waiting for the llama.cpp compile"
if ! wait "$build"; then
    cat "$VENV/llama-build.log" >&2
    echo "Building llama-cpp-python failed (log above); it needs a C/C++ compiler and CMake." >&2
    exit 1
fi
"$PY" -m pip install -q --find-links "$WHEELS" -e .
echo "install: done"
