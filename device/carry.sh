#!/usr/bin/env bash
# What the two device calls carry beyond the working tree, after ../shared/tools/device-stage-smollm2.sh
# has split the GGUF into .device-carry/a and .device-carry/b (both git-ignored):
#   .device-carry/a/wheels  the wheels the device lacks (device/wheels.py), beside the GGUF's first half
#   .device-carry/data      reduced CounterFact and the two corpora (about 11 MB), carried with b
# Each call carries at most 64 MiB; this checks both.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
[ -f .device-carry/a/part.aa ] || { echo "run ../shared/tools/device-stage-smollm2.sh first" >&2; exit 1; }
src=${EDITSCALE_DATA:-$root/../shared/data}
rm -rf .device-carry/a/wheels .device-carry/data
python3 device/wheels.py .device-carry/a/wheels --python-version 3.12
mkdir -p .device-carry/data/counterfact .device-carry/data/corpus
cp -r "$src/counterfact/easyedit" .device-carry/data/counterfact/
cp "$src/corpus/wikipedia-articles.txt" "$src/corpus/wikitext-2-raw-test.txt" .device-carry/data/corpus/
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
for call in "a" "b data"; do
  bytes=$tree
  for part in $call; do bytes=$(( bytes + $(du -sb ".device-carry/$part" | cut -f1) )); done
  echo "call carrying .device-carry/{${call// /,}} and the tree: $(( bytes / 1048576 )) MiB"
  (( bytes < 64 * 1048576 )) || { echo "over the 64 MiB a call carries" >&2; exit 1; }
done
