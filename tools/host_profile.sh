#!/usr/bin/env bash
# What issue 40 measures on each CPU host kind, in one go (about 10 minutes on a 2-core host; QUICK=1: about 2):
# the host's kind and matmul peak, `fpt bench` on the two shapes of the issue's "done when" (MiniLM on MNIST; 1024
# tokens with attention dropout), and tools/cpu_profile.py's "where the step goes" table for each, the 1024-token
# one before long attention too (the eager math). Run it with nothing else running (pause a campaign first), on
# a host kind docs/performance.md lacks (AMX-BF16; no native bf16), and copy the tables into that page.
#
#   tools/host_profile.sh                      # -> results/host-profiles/<kind>-<date>/
#   QUICK=1 OUT=/tmp/hp tools/host_profile.sh  # a check that every step runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 FPT_DATA=${FPT_DATA:-data}
flags=$(grep -oE 'amx_bf16|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')
case "$flags" in
  *amx_bf16*) kind=amx-bf16 ;;
  *avx512_bf16*) kind=avx512-bf16 ;;
  *) kind=no-native-bf16 ;;
esac
OUT=${OUT:-results/host-profiles/$kind-$(date -u +%F)}
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then
  bench=(--bench-steps 2 --warmup 1 --eval-batches 1); long_bench=(--bench-steps 1 --warmup 1 --eval-batches 1)
  steps=1; seq=256
else
  bench=(--bench-steps 20 --warmup 5); long_bench=(--bench-steps 5 --warmup 1 --eval-batches 1); steps=3; seq=1024
fi
long="{seq_len: $seq, token_dim: 16, num_classes: 10, eval_examples: 64}"
{
  echo "flags: ${flags:-none}"; lscpu | grep -E '^(Model name|CPU family|Model|Thread|Core|Socket)' || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
} | tee "$OUT/host.txt"
echo "== fpt bench, MiniLM on MNIST" >&2
"$PYTHON" -m fpt bench --task mnist --backbone minilm --no-reference --precisions auto "${bench[@]}" \
  --out "$OUT/bench-mnist.json" | tee "$OUT/bench-mnist.txt"
echo "== fpt bench, $seq tokens with attention dropout" >&2
"$PYTHON" -m fpt bench --task synthetic --task-options "$long" --backbone minilm --batch-size 8 --dropout 0.1 \
  --no-reference --precisions auto "${long_bench[@]}" --out "$OUT/bench-long.json" | tee "$OUT/bench-long.txt"
echo "== where the step goes" >&2
"$PYTHON" tools/cpu_profile.py --task mnist --dropout 0.0 --steps "$steps" 2>/dev/null | grep -v '^USDT' \
  | tee "$OUT/profile-mnist.md"
for variant in "" --no-c-attention; do
  "$PYTHON" tools/cpu_profile.py --task synthetic --task-options "$long" --batch-size 8 --dropout 0.1 \
    --steps "$steps" $variant 2>/dev/null | grep -v '^USDT' | tee "$OUT/profile-long${variant:+-eager}.md"
done
echo "wrote $OUT" >&2
