#!/bin/bash
# Byte gate for refactors (issue 17): run a fixed set of dpp commands into a fixed folder and list the
# sha256 of every file they write. Run it on two checkouts (same venv) and diff the lists:
#     bash benchmarks/byte_gate.sh /tmp/gate-out > before.sha   # on the old commit
#     bash benchmarks/byte_gate.sh /tmp/gate-out > after.sha    # on the new one; then diff
# The output folder must be the same path both times (corpus.json records the labeler's path).
set -euo pipefail
O=${1:?usage: byte_gate.sh OUT_FOLDER}
D="${DPP:-$(dirname "$0")/../.venv/bin/dpp}"  # DPP=... to run another checkout (PYTHONPATH=that tree)
export OMP_NUM_THREADS=1
rm -rf "$O"; mkdir -p "$O"
$D toyworld --n 60 --seed 3 --out $O/real --shard-size 25 --quiet
$D toyworld --n 30 --seed 4 --style textured --out $O/real-tex --quiet
$D train-labeler --data $O/real --shots 4 --seed 0 --out $O/labeler --members 2 --device cpu --quiet
$D train-labeler --generator toyworld-textured --data $O/real-tex --shots 4 --seed 0 --out $O/labeler-tex --members 2 --device cpu --quiet
$D generate --out $O/gen --n 6 --seed 5 --shard-size 3 --labeler $O/labeler --steps 3 --batch-size 4 --device cpu --keep-rejected --quiet
$D generate --out $O/gen --n 3 --seed 6 --shard-size 3 --labeler $O/labeler --steps 3 --batch-size 4 --device cpu --append --quiet
$D generate --out $O/gen-guided --n 4 --seed 7 --shard-size 4 --labeler $O/labeler --steps 3 --classifier toyworld --guidance-scale 5 --classes disk,square --device cpu --quiet
$D mix $O/real $O/gen --out $O/mix --seed 1 --n 20 --synthetic-fraction 0.25 --shard-size 8 --quiet
$D mix $O/real $O/gen --out $O/acc --seed 1 --policy accumulate --quiet
$D refilter $O/gen --out $O/refilt --min-target-pixels 30 --quiet
$D export croissant $O/mix --out $O/croissant.json --quiet
$D generate --out $O/gen-uncond --generator toyworld-textured --n 3 --seed 8 --labeler $O/labeler-tex --steps 2 --device cpu --quiet
$D sample --n 4 --seed 2 --steps 3 --out $O/sample.png --classes triangle --quiet
$D sample --n 3 --seed 2 --steps 3 --out $O/views --op views --real $O/real --index 1 --quiet
$D preview $O/gen --out $O/preview.png > /dev/null
$D audit $O/mix $O/gen > $O/audit.txt
$D verify $O/mix > $O/verify.txt 2>/dev/null
(cd "$O" && find . -type f ! -name '*.lock' -print0 | sort -z | xargs -0 sha256sum)
