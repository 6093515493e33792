#!/usr/bin/env bash
# Copies the offline data the device script reads (reduced CounterFact, the two corpora; about
# 11 MB) into .device-carry/data, which git ignores, for a device call to carry beside
# .device-carry/b. Run it after ../shared/tools/device-stage-smollm2.sh, which empties .device-carry.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
src=${EDITSCALE_DATA:-$root/../shared/data}
dst=$root/.device-carry/data
rm -rf "$dst" && mkdir -p "$dst/counterfact" "$dst/corpus"
cp -r "$src/counterfact/easyedit" "$dst/counterfact/"
cp "$src/corpus/wikipedia-articles.txt" "$src/corpus/wikitext-2-raw-test.txt" "$dst/corpus/"
du -sh "$dst"
