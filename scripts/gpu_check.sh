#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): B configs' speed, MFU and memory, the transformers reference codecs,
# a short flextok_b training with export and bf16 decode; writes reports/gpu/ (summary.json, table.md, one JSON per
# config). Fits in 10 minutes on one H100 / H200 (--budget, default 560 s, bounds the measurements).
#
#   make wheels      # here, once: the packages a bare GPU image lacks, as cp312 manylinux wheels in .whl/
#   bash scripts/gpu_check.sh [gpu_check.py options]        # there, from the repository root
#
# A machine whose Python lacks the project's dependencies gets them from .whl/ (installed into a temporary
# folder put on PYTHONPATH; nothing is fetched); the embedded shards are built when data/embedded is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3)}
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import vector_quantize_pytorch, webdataset, diffusers, jsonargparse, soundfile" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: error: $PY lacks the project's dependencies and .whl/ holds no wheels; run make wheels" >&2
        exit 2
    fi
    SITE=${GPU_CHECK_SITE:-/tmp/tokenizers_mm_site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -f data/embedded/image/dataset.json ]; then
    "$PY" -m tokenizers_mm.cli data embedded --out data/embedded
fi
exec "$PY" scripts/gpu_check.py "$@"
