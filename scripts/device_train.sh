#!/usr/bin/env bash
# Train on a lent GPU machine for a bounded time and send the weights back through $OUT.
#
#   bash scripts/device_train.sh CONFIG MINUTES [--resume]
#
# Run there from the repository root, carrying the compact data (scripts/compact_training_data.py
# writes it, e.g. to .carry/data) and, in .whl/, wheels of what the machine's image lacks
# (pycocotools). The run stops cleanly after MINUTES (its last.pt saved); the model of that state
# comes back as weights.safetensors.part-* (the device returns files of at most 16 MiB: join them
# with `cat weights.safetensors.part-* > weights.safetensors`), with log.jsonl and best.json.
set -uo pipefail
config=${1:?usage: device_train.sh CONFIG MINUTES [--resume]}
minutes=${2:?usage: device_train.sh CONFIG MINUTES [--resume]}
out=${OUT:?OUT must name the folder whose files come back}
if ! python3 -c "import pycocotools" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi -L
run=$(python3 -c "from segany.train.trainer import load_config; print(load_config('$config').output_dir)") || exit 1
# A hard limit past the clean stop, so that a stuck run still leaves time to send back what it saved.
timeout "$(python3 -c "print(int($minutes * 60 + 45))")" \
  python3 -m segany.cli train "$config" --max-minutes "$minutes" "${@:3}" > "$out/train_stdout.log" 2>&1
echo "train exit status $?"
tail -c 400 "$out/train_stdout.log" | tr '\r' '\n' | tail -3
cp "$run/log.jsonl" "$out/" 2>/dev/null
cp "$run/best.json" "$out/" 2>/dev/null
[ -f "$run/last.pt" ] || { echo "no $run/last.pt: nothing to send back"; exit 1; }
weights=$(mktemp -d)/weights.safetensors
python3 -c "
from segany.checkpoints import load_model, save_model
save_model(load_model('$run/last.pt'), '$weights')" || exit 1
split -b 15M "$weights" "$out/weights.safetensors.part-"
ls -l "$out"
