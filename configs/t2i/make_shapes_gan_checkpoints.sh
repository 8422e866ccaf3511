#!/usr/bin/env bash
# Rebuild the bundled demo weights checkpoints/shapes64/{stackgan,damsm,attngan} (fp16 EMA generators + config.json;
# the DAMSM is what the AttnGAN recipe trains against): train StackGAN, pretrain DAMSM, train AttnGAN with it, copy
# each run's export/ into checkpoints/.  `make checkpoints` runs this.
# Budgets (optimizer steps) default to what the bundled weights got on the 2-core CPU (docs/RESULTS.md); the recipes'
# own max_steps (20,000) are what a GPU or a night of CPU should use:
#   STACKGAN_STEPS=20000 DAMSM_STEPS=1500 ATTNGAN_STEPS=20000 configs/t2i/make_shapes_gan_checkpoints.sh
# StackGAN and the DAMSM -> AttnGAN chain are independent: PARALLEL=1 runs them side by side (one core each).
# MIXED_PRECISION=bf16 trains in bf16 autocast, as the bundled GANs were (1.4-1.6x faster on a CPU with AVX512-BF16
# or AMX, slower without; docs/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T2I=${T2I:-.venv/bin/t2i}
OUT=${OUT:-checkpoints/shapes64}
LOGS=${LOGS:-runs/make-checkpoints}
mkdir -p "$LOGS"
run_of() { sed -n 's/^run folder: \([^ ]*\).*/\1/p' "$1" | tail -n1; }

$T2I data encode shapes --num 10000            # pre-encode the training captions once (cached on disk)

stackgan() {
  $T2I train configs/t2i/shapes_stackgan.yaml "train.mixed_precision=${MIXED_PRECISION:-no}" \
    --max-steps "${STACKGAN_STEPS:-18225}" --no-progress > "$LOGS/stackgan.out"
}
attngan() {
  $T2I train configs/t2i/shapes_damsm.yaml --max-steps "${DAMSM_STEPS:-500}" --no-progress > "$LOGS/damsm.out"
  $T2I train configs/t2i/shapes_attngan.yaml "model.damsm_checkpoint=$(run_of "$LOGS/damsm.out")" \
    "train.mixed_precision=${MIXED_PRECISION:-no}" \
    --max-steps "${ATTNGAN_STEPS:-9757}" --no-progress > "$LOGS/attngan.out"
}
if [ "${PARALLEL:-0}" = 1 ]; then
  stackgan & s=$!; attngan & a=$!; wait "$s"; wait "$a"
else
  stackgan; attngan
fi
for m in stackgan damsm attngan; do
  rm -rf "${OUT:?}/$m"
  cp -r "$(run_of "$LOGS/$m.out")/export" "$OUT/$m"
  du -sh "$OUT/$m"
done
