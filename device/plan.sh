#!/usr/bin/env bash
# One GPU window (15 minutes of device time, two calls): the workflow itself, on the device machine.
#
# Here, once:  bash ../shared/tools/device-stage-smollm2.sh && bash device/carry.sh
#   (.device-carry/a: the GGUF's first half and the wheels; .device-carry/b: its second half;
#    .device-carry/data: the offline data the workflow reads)
# Call 1, carrying .device-carry/a:                    bash device/plan.sh install
# Call 2, at once, carrying .device-carry/b and /data: bash device/plan.sh run
# On this CPU, the same run on a tiny model (tests/test_device_plan.py, in CI):
#   bash device/plan.sh run --tiny MODEL_FOLDER
#
# `install` puts the carried wheels (device/wheels.py: snakemake's closure less pulp, and gguf) in
# $DEVICE_SITE and the GGUF's first half in $DEVICE_ROOT. `run` joins the GGUF into editscale's
# cache, times the values loop (fp32, bf16, batch 1; benchmarks/values.py), then runs
#   snakemake --cores all --scheduler greedy --configfile config/gpu-paper-grid.yaml
# until the budget's end, and packs every table, figure, finding, log and benchmark (no tensors)
# into $OUT/results.tar.gz. Every job writes atomically, so what finished is usable.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${DEVICE_CARRY:-.device-carry}
ROOT=${DEVICE_ROOT:-/root/editscale-device}
SITE=${DEVICE_SITE:-$ROOT/site}
OUT=${OUT:-device-out}
mode=${1:?usage: device/plan.sh install | run [--tiny MODEL_FOLDER]}
shift

if [ "$mode" = install ]; then
  set -e
  mkdir -p "$ROOT" "$SITE"
  cp "$CARRY/a/part.aa" "$ROOT/"
  python3 -m pip install -q --no-index --no-deps --target "$SITE" "$CARRY"/a/wheels/*.whl
  echo "# installed $(ls "$CARRY/a/wheels" | wc -l) wheels in $SITE; first half of the GGUF in $ROOT"
  exit 0
fi
[ "$mode" = run ] || { echo "unknown mode $mode: install or run" >&2; exit 2; }

mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d "$CARRY/data" ] && export EDITSCALE_DATA="${EDITSCALE_DATA:-$(cd "$CARRY/data" && pwd)}"
budget=${DEVICE_BUDGET_S:-540}
began=$(date +%s)
left() { echo $(( budget - ($(date +%s) - began) )); }
work=$OUT/work
mkdir -p "$work"

if [ "${1:-}" = "--tiny" ]; then
  device=cpu model=$(cd "${2:?--tiny needs a model folder}" && pwd)
  # One algorithm per experiment: the CPU check is of the plan, not of the grid (the tests run that).
  config=(--configfile "$PWD/.test/config/config.yaml" --config "model={spec: $model, device: cpu}"
          "sweep={algorithms: [memit]}" "batch={algorithms: [memit]}" "sequential={algorithms: [memit]}")
  bench=(--model "$model" --tiny --records 4 --sizes 4 --layer 1 --no-flops)
  single=(--model "$model" --tiny --records 2 --sizes 1 --layer 1 --no-flops)
else
  device=cuda model=smollm2-135m
  # The GGUF goes where editscale looks for the embedded model, so model.spec stays smollm2-135m
  # (its sha256 is checked on first use).
  export EDITSCALE_CACHE=${EDITSCALE_CACHE:-$ROOT/cache}
  mkdir -p "$EDITSCALE_CACHE/smollm2"
  cat "$ROOT/part.aa" "$CARRY/b/part.ab" > "$EDITSCALE_CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  config=(--configfile "$PWD/config/gpu-paper-grid.yaml")
  bench=(--records 64 --sizes 64 --layer 3 --no-flops)
  single=(--records 8 --sizes 1 --layer 3 --no-flops)
fi
echo "# device/plan.sh on $device, budget ${budget}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 -c "import torch; print('# torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

step() {  # step NAME LIMIT_S COMMAND...: run it under its limit, log it, say how it ended
  local name=$1 limit=$2; shift 2
  [ "$(left)" -lt 15 ] && { echo "== $name: skipped, $(left)s left"; return; }
  (( limit > $(left) )) && limit=$(left)
  echo "== $name (at most ${limit}s)"
  local t=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -e '^#' -e '^batch' -e 'Error' -e 'steps (' -e 'Finished job' "$OUT/$name.log" | grep -v 'it/s]' | tail -25
  echo "== $name: exit $rc after $(( $(date +%s) - t ))s"
}

# The loop's speed where the issue set targets: fp32 and bf16 at batch 64, and single edits.
step values-fp32 60 python3 benchmarks/values.py --device "$device" --policies cuda cpu "${bench[@]}"
step values-bf16 40 python3 benchmarks/values.py --device "$device" --dtype bfloat16 "${bench[@]}"
step values-single 30 python3 benchmarks/values.py --device "$device" "${single[@]}"
step workflow $(( $(left) - 20 )) python3 -m snakemake -s workflow/Snakefile --directory "$work" --cores all \
  --scheduler greedy --keep-going "${config[@]}"
tar -czf "$OUT/results.tar.gz" -C "$work" --exclude='*.safetensors' --exclude='.snakemake' . 2>/dev/null
echo "# results: $(tar -tzf "$OUT/results.tar.gz" | grep -c '\.parquet$') tables in $OUT/results.tar.gz"
echo "# device/plan.sh: $(( $(date +%s) - began ))s in all"
