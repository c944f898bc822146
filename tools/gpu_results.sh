#!/usr/bin/env bash
# The results campaign on a GPU: a matrix's rows side by side on one GPU, each row its own
# `fpt reproduce` process (the steps are host-bound, so four processes keep one GPU busy), each cut at
# TIME_LIMIT seconds; then the rows' run folders merged into one sweep and `fpt report` on it. The run
# files land in $OUT/results/<matrix>-<budget>/ in the layout of the committed results/ (result.json
# names the GPU); copy that folder into the repository's results/ and commit it. A rerun resumes
# (finished runs are skipped, partial ones resume from their checkpoints, if $OUT is kept).
#
#   OUT=gpu-out tools/gpu_results.sh                              # table1, budget gpu, 540 s a row
#   MATRIX=params ROWS="output only,+ layernorm" OUT=gpu-out tools/gpu_results.sh
#   MATRIX=pretraining BACKBONE=mpnet ROWS="Pretrained (language),Random init" OUT=gpu-out tools/gpu_results.sh
#   PYTHON=.venv/bin/python BUDGET=smoke TIME_LIMIT=120 OUT=/tmp/g tools/gpu_results.sh   # on a CPU, tiny
#
# Data: $FPT_DATA (default $OUT/data), filled by tools/prepare_data.sh from $SOURCE_DATA (default
# ../shared/data, if present) when missing; ListOps is generated.
set -uo pipefail
OUT=${OUT:-gpu-out}; MATRIX=${MATRIX:-table1}; BUDGET=${BUDGET:-gpu}; TIME_LIMIT=${TIME_LIMIT:-540}
BACKBONE=${BACKBONE:-}; PYTHON=${PYTHON:-python3}; SOURCE_DATA=${SOURCE_DATA:-../shared/data}
export FPT_DATA=${FPT_DATA:-$OUT/data} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT/parts" "$FPT_DATA"
fpt() { "$PYTHON" -m fpt "$@"; }

tasks=$("$PYTHON" -c "from fpt.paper.reproduce import load_matrix; from fpt.paper.budgets import get_budget
b = get_budget('$BUDGET'); print(' '.join(t for t in load_matrix('$MATRIX').tasks if t in b))") || exit 1
FPT_DATA="$FPT_DATA" PYTHON="$PYTHON" SOURCE_DATA="$SOURCE_DATA" tools/prepare_data.sh $tasks  # before the rows' clock

rows=${ROWS:-$("$PYTHON" -c "from fpt.paper.reproduce import load_matrix; print(','.join(r.name for r in load_matrix('$MATRIX').rows))")}
IFS=',' read -ra row_list <<< "$rows"
for row in "${row_list[@]}"; do
    slug=$(echo "$row" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
    timeout "$TIME_LIMIT" "$PYTHON" -m fpt reproduce "$MATRIX" --budget "$BUDGET" --rows "$row" --quiet \
        ${BACKBONE:+--backbone "$BACKBONE"} --out "$OUT/parts/$slug" > "$OUT/parts/$slug.log" 2>&1 &
done
wait

sweep="$OUT/results/$MATRIX${BACKBONE:+-$BACKBONE}-$BUDGET"
mkdir -p "$sweep/runs"
for part in "$OUT"/parts/*/; do
    [ -d "$part/runs" ] && cp -r "$part"/runs/* "$sweep/runs/"
    [ -f "$part/matrix.yaml" ] && cp "$part/matrix.yaml" "$part/sweep.json" "$sweep/"
done
find "$sweep" -name 'checkpoint.pt*' -delete  # results are data, never checkpoints
fpt report "$sweep" | tee "$OUT/report.txt"
