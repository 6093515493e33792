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
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "device/plan.sh: $*" >&2; exit 2; }  # a missing or damaged input: stop before any work
CARRY=${DEVICE_CARRY:-.device-carry}
ROOT=${DEVICE_ROOT:-/root/editscale-device}
SITE=${DEVICE_SITE:-$ROOT/site}
OUT=${OUT:-device-out}
[ $# -ge 1 ] || die "usage: device/plan.sh install | run [--tiny MODEL_FOLDER]"
mode=$1
shift

if [ "$mode" = install ]; then
  [ -s "$CARRY/a/part.aa" ] || die "$CARRY/a/part.aa, the GGUF's first half, is missing or empty: run device/carry.sh here"
  ls "$CARRY"/a/wheels/*.whl >/dev/null 2>&1 || die "no wheels in $CARRY/a/wheels: run device/carry.sh here"
  mkdir -p "$ROOT" "$SITE"
  cp "$CARRY/a/part.aa" "$ROOT/part.aa.tmp" && mv "$ROOT/part.aa.tmp" "$ROOT/part.aa"
  python3 -m pip install -q --no-index --no-deps --target "$SITE" "$CARRY"/a/wheels/*.whl
  echo "# installed $(ls "$CARRY/a/wheels" | wc -l) wheels in $SITE; first half of the GGUF in $ROOT"
  exit 0
fi
[ "$mode" = run ] || die "unknown mode '$mode': install or run"

budget=${DEVICE_BUDGET_S:-540}
[[ $budget =~ ^[0-9]+$ ]] && (( budget > 0 )) || die "DEVICE_BUDGET_S='$budget': a whole number of seconds above 0"
if [ "${1:-}" = "--tiny" ]; then
  [ $# -ge 2 ] || die "--tiny needs a model folder"
  [ -d "$2" ] || die "--tiny $2: no such folder"
  ls "$2"/*.safetensors >/dev/null 2>&1 && [ -f "$2/config.json" ] \
    || die "--tiny $2: not a model folder (config.json and *.safetensors)"
  tiny=$(cd "$2" && pwd)
else
  [ $# -eq 0 ] || die "unknown argument '$1': run [--tiny MODEL_FOLDER]"
  tiny=""
  gguf_sha=$(sed -n 's/^_SMOLLM2_SHA256 = "\([0-9a-f]*\)"$/\1/p' src/editscale/models/loading.py)
  [ -n "$gguf_sha" ] || die "no _SMOLLM2_SHA256 in src/editscale/models/loading.py"
  for half in "$ROOT/part.aa" "$CARRY/b/part.ab"; do
    [ -s "$half" ] || die "$half, a half of the GGUF, is missing or empty: call 1 installs part.aa, call 2 carries part.ab"
  done
fi

mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d "$CARRY/data" ] && export EDITSCALE_DATA="${EDITSCALE_DATA:-$(cd "$CARRY/data" && pwd)}"
began=$(date +%s)
left() { echo $(( budget - ($(date +%s) - began) )); }
work=$OUT/work
mkdir -p "$work"

if [ -n "$tiny" ]; then
  device=cpu model=$tiny
  # The model folder goes in as YAML written by yaml.safe_dump, so any folder name is one string.
  # One algorithm per experiment: the CPU check is of the plan, not of the grid (the tests run that).
  python3 - "$model" >"$work/device-tiny.yaml" <<'PY'
import sys, yaml
print(yaml.safe_dump({"model": {"spec": sys.argv[1], "device": "cpu"}, "sweep": {"algorithms": ["memit"]},
                      "batch": {"algorithms": ["memit"]}, "sequential": {"algorithms": ["memit"]}}))
PY
  config=(--configfile "$PWD/.test/config/config.yaml" "$work/device-tiny.yaml")
  bench=(--model "$model" --tiny --records 4 --sizes 4 --layer 1 --no-flops)
  single=(--model "$model" --tiny --records 2 --sizes 1 --layer 1 --no-flops)
else
  device=cuda model=smollm2-135m
  # The GGUF goes where editscale looks for the embedded model, so model.spec stays smollm2-135m. It
  # is joined beside its place and checked before it is moved there: a damaged one never enters the cache.
  export EDITSCALE_CACHE=${EDITSCALE_CACHE:-$ROOT/cache}
  mkdir -p "$EDITSCALE_CACHE/smollm2"
  gguf=$EDITSCALE_CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  cat "$ROOT/part.aa" "$CARRY/b/part.ab" >"$gguf.tmp"
  joined=$(sha256sum "$gguf.tmp" | cut -d' ' -f1)
  [ "$joined" = "$gguf_sha" ] || { rm -f "$gguf.tmp"; die "the joined GGUF has sha256 $joined, expected $gguf_sha: carry both halves again"; }
  mv "$gguf.tmp" "$gguf"
  config=(--configfile "$PWD/config/gpu-paper-grid.yaml")
  bench=(--records 64 --sizes 64 --layer 3 --no-flops)
  single=(--records 8 --sizes 1 --layer 3 --no-flops)
fi
echo "# device/plan.sh on $device, budget ${budget}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 -c "import torch; print('# torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

step() {  # step NAME LIMIT_S COMMAND...: run it under its limit, log it, say how it ended (a failed step
  # is reported and the plan goes on: what finished is still packed)
  local name=$1 limit=$2 rc=0; shift 2
  [ "$(left)" -lt 15 ] && { echo "== $name: skipped, $(left)s left"; return 0; }
  (( limit > $(left) )) && limit=$(left)
  echo "== $name (at most ${limit}s)"
  local t=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  { grep -e '^#' -e '^batch' -e 'Error' -e 'steps (' -e 'Finished job' "$OUT/$name.log" | grep -v 'it/s]' | tail -25; } || true
  echo "== $name: exit $rc after $(( $(date +%s) - t ))s"
}

# The loop's speed where the issue set targets: fp32 and bf16 at batch 64, and single edits.
step values-fp32 60 python3 benchmarks/values.py --device "$device" --policies cuda cpu "${bench[@]}"
step values-bf16 40 python3 benchmarks/values.py --device "$device" --dtype bfloat16 "${bench[@]}"
step values-single 30 python3 benchmarks/values.py --device "$device" "${single[@]}"
step workflow $(( $(left) - 20 )) python3 -m snakemake -s workflow/Snakefile --directory "$work" --cores all \
  --scheduler greedy --keep-going "${config[@]}"
tar -czf "$OUT/results.tar.gz" -C "$work" --exclude='*.safetensors' --exclude='.snakemake' . 2>/dev/null || true
echo "# results: $(tar -tzf "$OUT/results.tar.gz" | grep -c '\.parquet$') tables in $OUT/results.tar.gz"
echo "# device/plan.sh: $(( $(date +%s) - began ))s in all"
