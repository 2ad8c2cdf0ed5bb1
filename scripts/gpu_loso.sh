#!/usr/bin/env bash
# Leave-one-source-out runs of several recipes at once on a lent GPU machine (issue 12).
#
# The machine has JAX but no TensorFlow and cannot reach a package index; it receives the
# checkout (64 MiB at most). Prepared here beforehand (both folders are git-ignored):
#   .whl/      the project's pure-Keras training needs that the machine lacks (keras, namex,
#              optree, pydantic, pydantic-core, annotated-types, typing-inspection,
#              typing-extensions, reportlab), as cp312 wheels pinned by constraints.txt
#   .devdata/  data.tgz (scripts/pack_training_data.py pack ../shared/data, WebP q70) and
#              weights/*.npz (scripts/convert_lite_weights.py --dtype float16)
# Every fold of every recipe is its own process (the folds share nothing until loso.json).
# Results (fold folders without model files) go to $OUT/results.tgz, logs to $OUT/logs.tgz;
# back here, `melanoma-triage train --loso` with the same recipe and output folder finds every
# fold done and writes loso.json and loso.md.
#
#   usage: scripts/gpu_loso.sh DEADLINE_SECONDS 'NAME|OPTIONS' ...
set -uo pipefail
deadline=$1; shift
out=${OUT:-runs/gpu-out}; mkdir -p "$out" runs/weights runs/gpu
py=${PYTHON:-python3}  # PYTHON=.venv/bin/python PYTHONPATH=<jax>: a dry run on this machine
$py -c "import keras, pydantic, reportlab" 2>/dev/null ||
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
cp -n .devdata/weights/*.npz runs/weights/  # -n: a dry run here keeps its float32 files
mkdir -p /tmp/packed && tar xzf .devdata/data.tgz -C /tmp/packed
$py scripts/pack_training_data.py unpack /tmp/packed/data /tmp/data || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

common="--data /tmp/data --head-epochs 2 --epochs 8 --lr-fine 3e-4 --lr-schedule cosine --unfreeze-from block4a
        --patience 4 --seed 42 --colour-constancy shades_of_gray --augmentation camera"
pids=()
for spec in "$@"; do
    name=${spec%%|*}; opts=${spec#*|}
    for src in isic-9class ham10000 isic2017; do
        # shellcheck disable=SC2086
        timeout "$deadline" $py scripts/gpu_train.py $common $opts --out "runs/gpu/$name" --loso \
            --loso-source "$src" --cache-dir "runs/cache-$name-$src" > "runs/gpu/$name-$src.log" 2>&1 &
        pids+=($!)
    done
done
wait "${pids[@]}"
nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
tar czf "$out/results.tgz" --exclude='*.keras' --exclude='checkpoints' --exclude='*.h5' -C runs gpu
tar czf "$out/logs.tgz" runs/gpu/*.log
grep -h "fold .*: scoring\|done\|Error\|error" runs/gpu/*.log | tail -40
