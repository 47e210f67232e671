#!/usr/bin/env bash
# The prepared GPU check (issue 9): on a machine with a CUDA GPU, the throughput of our generation job
# against the bare diffusers DDIMPipeline, for the shipped 32x32 model and a random-weight 256x256 UNet
# (~100M parameters), per dtype / batch size / channels_last, with GPU utilization. Under 8 minutes:
# benchmarks/gpu.py stops starting new cases after --budget-s (default 420 s).
#
#   bash benchmarks/gpu.sh                 # uses .venv/bin/python if there, else python3
#   PYTHON=/path/to/python bash benchmarks/gpu.sh --compile
#
# The Python must have this project installed with a CUDA build of torch (README, "Installing").
# On a machine whose Python has torch but not the rest, install our pinned wheels first, offline:
#   python -m pip install --no-index --find-links WHEELS_DIR -c constraints.txt -e .
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" benchmarks/gpu.py --device cuda "$@"
