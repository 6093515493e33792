#!/usr/bin/env bash
# The GPU session's one command (at most 8 minutes on one H100 or H200): values on SmolLM2 in
# fp32 and bf16 and on a random Llama-3-8B-shaped model in bf16, the prepared solvers at 8B shape,
# C throughput, then the batch experiment of config/evidence-batch.yaml on cuda for the time left.
#
# On the GPU machine (no snakemake, gguf or network), after the two carried halves of SmolLM2 are
# joined (../shared/tools/device-stage-smollm2.sh; its assemble.sh sets $SMOLLM2_GGUF and puts the
# gguf wheel on PYTHONPATH) and the offline data is carried (benchmarks/device-carry-data.sh):
#   source .device-carry/b/assemble.sh && bash benchmarks/device.sh
# On this CPU, to check the script itself (tests/test_device_script.py runs this in CI):
#   bash benchmarks/device.sh --tiny MODEL_FOLDER
# Every step has its own time limit, so one that hangs or fails costs only its share; each
# step's output goes to $OUT/<step>.log (OUT defaults to ./device-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d .device-carry/data ] && export EDITSCALE_DATA="${EDITSCALE_DATA:-$PWD/.device-carry/data}"
budget=${DEVICE_BUDGET_S:-470}
began=$(date +%s)
left() { echo $(( budget - ($(date +%s) - began) )); }

if [ "${1:-}" = "--tiny" ]; then
  device=cpu model=${2:?--tiny needs a model folder}
  values=(--records 4 --sizes 2 4 --layer 1 --no-flops)
  shape=(--tiny)
  solvers=(--d-in 256 --d-out 64 --old-d 64 --quick)
  stats=(--tokens 2000 --batch-tokens 1024 --max-length 256)
  batch=(--n 32 --sizes 4 16 32 --layer 1)
else
  device=cuda model=${SMOLLM2_GGUF:?source .device-carry/b/assemble.sh first: it sets SMOLLM2_GGUF}
  values=(--records 32 --sizes 8 32 --layer 3 --no-flops)
  shape=(--llama3-shape)
  solvers=(--quick --old-d 3072)
  stats=(--tokens 200000 --batch-tokens 32768)
  batch=(--n 4096 --sizes 16 64 256 1024 4096)
fi
echo "# benchmarks/device.sh on $device, model $model, budget ${budget}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 -c "import torch; print('# torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

step() {  # step NAME LIMIT_S COMMAND...: run it under its limit, log it, say how it ended
  local name=$1 limit=$2; shift 2
  [ "$(left)" -lt 15 ] && { echo "== $name: skipped, $(left)s left"; return; }
  (( limit > $(left) )) && limit=$(left)
  echo "== $name (at most ${limit}s)"
  local t=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -v -e 'it/s]' -e 's/it]' "$OUT/$name.log" | grep -e '^#' -e '^batch' -e '^|' -e '^layers' -e 'faster' \
    -e ': [0-9.]* s (at' -e '^values for' -e 'skipped' -e 'in all' -e 'Error' | head -40
  echo "== $name: exit $rc after $(( $(date +%s) - t ))s"
}

step values-smollm2-fp32 70 python3 benchmarks/values.py --model "$model" --device "$device" "${values[@]}"
step values-smollm2-bf16 70 python3 benchmarks/values.py --model "$model" --device "$device" --dtype bfloat16 \
  "${values[@]}"
step values-llama3-8b-bf16 100 python3 benchmarks/values.py --model "$model" --device "$device" "${shape[@]}" \
  "${values[@]}"
step solvers-8b 60 python3 benchmarks/scale.py --device "$device" "${solvers[@]}"
step stats 40 python3 benchmarks/stats.py --model "$model" --device "$device" "${stats[@]}"
seconds=$(( $(left) - 40 ))
step batch $(( $(left) - 5 )) python3 benchmarks/device_batch.py config/evidence-batch.yaml --device "$device" \
  --model "$model" "${batch[@]}" --seconds "$seconds" --out "$OUT/batch"
echo "# benchmarks/device.sh: $(( $(date +%s) - began ))s in all"
