#!/usr/bin/env bash
# The real tasks' data under $FPT_DATA, once: MNIST, CIFAR-10 and remote homology copied from
# $SOURCE_DATA (default ../shared/data: the project machine's copy) when missing, CIFAR-10's JPEG
# archive written as the standard pickles, ListOps generated; then `fpt data prepare` checks each.
# A task whose data cannot be had says so in one line and the others go on (its cells will say why).
#
#   FPT_DATA=data tools/prepare_data.sh mnist cifar10 listops homology
set -uo pipefail
PYTHON=${PYTHON:-python3}; SOURCE_DATA=${SOURCE_DATA:-../shared/data}; FPT_DATA=${FPT_DATA:-data}
export FPT_DATA HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$FPT_DATA"
fpt() { "$PYTHON" -m fpt "$@"; }
for task in "$@"; do
    case $task in
        mnist) [ -d "$FPT_DATA/mnist" ] || cp -r "$SOURCE_DATA/mnist" "$FPT_DATA/" 2>/dev/null; fpt data prepare mnist ;;
        cifar10|cifar10-lra)
            if [ ! -d "$FPT_DATA/cifar10/cifar-10-batches-py" ] && [ -f "$SOURCE_DATA/cifar10/to_cifar_py.py" ]; then
                "$PYTHON" "$SOURCE_DATA/cifar10/to_cifar_py.py" "$FPT_DATA/cifar10"
            fi
            fpt data prepare cifar10 ;;
        homology) mkdir -p "$FPT_DATA/remote_homology"
                  # file by file: a folder set up before TAPE's fold-holdout test split was shipped gets it too
                  cp -n "$SOURCE_DATA"/remote_homology/*.csv "$FPT_DATA/remote_homology/" 2>/dev/null
                  fpt data prepare homology ;;
        listops) [ -f "$FPT_DATA/listops/basic_test.tsv" ] || fpt data prepare listops --seed 0 ;;
        *) true ;;  # generated tasks (bit-memory, bit-xor) need no data
    esac || echo "prepare_data: data for $task not ready; its cells will say why" >&2
done
