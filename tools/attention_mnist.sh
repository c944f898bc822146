#!/usr/bin/env bash
# The MNIST attention figure (issue 41): FPT and Random init, 1,000 steps of the cpu budget's MNIST recipe,
# seed 0, laid out as a sweep folder so that `fpt report` draws attention_mnist.png from their checkpoints
# (about 6 minutes a run on a slow 2-core AVX512-BF16 host). Commit OUT without its checkpoints (.gitignore).
set -eu
O=${OUT:-results/attention-mnist-1k}; PYTHON=${PYTHON:-.venv/bin/python}; STEPS=${STEPS:-1000}  # STEPS: a quick check
cd "$(dirname "$0")/.."
export FPT_DATA=${FPT_DATA:-data} HF_HUB_OFFLINE=1
mkdir -p $O
cat > $O/matrix.yaml <<'YAML'
# What the frozen attention looks at on MNIST (issue 41): FPT and Random init, 1,000 steps of the cpu budget's
# MNIST recipe (cosine from 3e-3, no dropout), seed 0: `fpt train --task mnist --backbone minilm --init
# pretrained|random --steps 1000 --eval-every 500 --lr 0.003 --lr-schedule cosine --warmup-steps 200
# --dropout 0.0 --seed 0 --run-dir OUT/runs/fpt|random-init/mnist/lr0.003-seed0`, then `fpt report OUT`,
# which drew attention_mnist.png while the checkpoints were there (they are not committed).
name: attention-mnist-1k
description: FPT and Random init on MNIST, 1,000 steps, for the attention maps.
tasks: [mnist]
rows:
  - {name: FPT, config: {init: pretrained, train: fpt}}
  - {name: Random init, config: {init: random, train: fpt}}
YAML
printf '{\n  "matrix": "table1",\n  "budget": null,\n  "seeds": 1,\n  "backbone": null,\n  "lr_sweep": null\n}\n' > $O/sweep.json
for pair in "fpt:pretrained" "random-init:random"; do
  slug=${pair%%:*}; init=${pair##*:}
  "$PYTHON" -m fpt train --task mnist --backbone minilm --init $init --steps $STEPS --eval-every 500 \
    --batch-size 32 --lr 0.003 --lr-schedule cosine --warmup-steps $((STEPS < 1000 ? 0 : 200)) --dropout 0.0 --seed 0 \
    --run-dir $O/runs/$slug/mnist/lr0.003-seed0 --quiet
done
"$PYTHON" -m fpt report $O
