#!/usr/bin/env bash
# fpt's GPU figures for docs/performance.md, in one command on a GPU machine (the `device` tool's
# lent machine, or any CUDA host): the loop's correctness on the GPU against the CPU, then `fpt bench`
# at GPT-2 small's shape (random weights, sequence 1024, batch 32, bf16 and fp32, against the
# reference loop), then fpt's step over sequence lengths 64/256/1024 x batch 8/32 in bf16, then a
# kernel profile of the bf16 step (tools/gpu_profile.py).
#
#   OUT=gpu-results tools/gpu_bench.sh
#
# With MINILM=FOLDER (the embedded MiniLM written small by tools/device_minilm.py, to fit the device
# tool's 64 MiB) and FPT_DATA=FOLDER holding mnist/, it then runs MiniLM on MNIST on the GPU: `fpt bench`
# against the reference loop, and the paper's 4x4 patches trained 8,000 steps in bf16, bf16 with CUDA
# graphs (reduce-overhead) and fp32, each a run folder under $OUT (about 6 more minutes on an H100).
#
#   OUT=gpu-results MINILM=.gpu_carry/minilm FPT_DATA=.gpu_carry tools/gpu_bench.sh
#
# Runs from the repository root with the machine's own python3 (fpt from this checkout, not installed).
# transformers wheels in .whl/ (optional) are installed to /tmp/site first, for a machine whose
# transformers differs from the pinned one. Every figure goes to $OUT as JSON plus the printed log.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_bench: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name())' | tee -a "$OUT/gpu.txt" || exit 1

status=0
step() {  # step NAME COMMAND...: run, log to $OUT/gpu_log.txt, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/gpu_log.txt"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/gpu_log.txt" || { echo "== $name FAILED" | tee -a "$OUT/gpu_log.txt"; status=1; }
    echo "== $name took $((SECONDS - t0)) s" | tee -a "$OUT/gpu_log.txt"
}
step gpu_bench python3 -m fpt bench --task synthetic --task-options '{seq_len: 1024, token_dim: 16}' \
    --backbone gpt2 --init random --batch-size 32 --precisions bf16,fp32 --bench-steps 10 --warmup 3 \
    --out "$OUT/gpu_bench.json"
step gpu_check python3 tools/gpu_check.py --out "$OUT/gpu_check.json"
step gpu_scaling python3 -m fpt bench --task synthetic --backbone gpt2 --init random --precision bf16 \
    --scaling 64,256,1024 --scaling-batches 8,32 --bench-steps 5 --warmup 2 --out "$OUT/gpu_scaling.json"
# where the bf16 step's GPU time goes, and the step with transformers' GELU and with torch.compile
step gpu_profile python3 tools/gpu_profile.py --out "$OUT" --variants base,gelu_new,compile
if [[ -n "${MINILM:-}" ]]; then
    step mnist_bench python3 -m fpt bench --task mnist --backbone "$MINILM" --out "$OUT/mnist_bench.json"
    for variant in "bf16:--precision bf16" "bf16-ro:--precision bf16 --compile --compile-mode reduce-overhead" \
                   "fp32:--precision fp32"; do
        name=mnist4-${variant%%:*}
        # shellcheck disable=SC2086  # the variant's flags split on purpose
        step "$name" python3 -m fpt train --task mnist --backbone "$MINILM" ${variant#*:} --steps 8000 --lr 3e-3 \
            --lr-schedule cosine --warmup-steps 200 --dropout 0 --eval-every 2000 --quiet --run-dir "$OUT/$name"
    done
fi
exit $status
