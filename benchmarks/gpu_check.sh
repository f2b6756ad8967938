#!/usr/bin/env bash
# On a machine with a GPU: the default supernet at 224x224 in bf16, plain and under torchrun
# (NCCL, every GPU), a search generation, the input pipeline and the supernet overhead;
# writes benchmarks/results/gpu.json. Runs the project from the tree with the machine's own
# python3 (torch with CUDA, nothing to install); under 8 minutes on one H200.
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke    # every part, tiny, on the CPU (a check here)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'GPU(s)')"
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
