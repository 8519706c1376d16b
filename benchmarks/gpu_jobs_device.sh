#!/bin/bash
# What the GPU machine runs for benchmarks/gpu_jobs.py (its Python has torch but not SimpleITK, MONAI
# or nibabel, and nothing can be fetched there): SimpleITK travels as an xz tar of its unpacked
# wheel (29 MB instead of the wheel's 53), the others as wheels; then train + predict.
set -u
start=$(date +%s)
mkdir -p /tmp/site && tar xJf .whl/sitk.tar.xz -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
echo "setup $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import SimpleITK, monai, nibabel, torch, gbmseg; print('imports ok', torch.__version__, torch.cuda.is_available())" || exit 1
python3 benchmarks/gpu_jobs.py train .gpu "$OUT" --workers "${WORKERS:-15}" --deadline "${DEADLINE:-400}" \
    --hard-deadline "${HARD_DEADLINE:-480}"
tail -n 5 "$OUT/gpu_jobs.log"
