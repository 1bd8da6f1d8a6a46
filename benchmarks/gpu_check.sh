#!/usr/bin/env bash
# GPU proof run (see benchmarks/gpu_check.py): paper-shaped random-init models through the real workflow.
#   bash benchmarks/gpu_check.sh [--out FILE]      one GPU, paper shapes
#   bash benchmarks/gpu_check.sh --small           CPU, tiny shapes (the test suite)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python="$(command -v python3 || command -v python)"; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$here/gpu_check.py" "$@"
