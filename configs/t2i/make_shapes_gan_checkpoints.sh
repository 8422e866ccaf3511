#!/usr/bin/env bash
# Rebuild the bundled demo weights checkpoints/shapes64/{stackgan,attngan} (fp16 EMA generator + config.json):
# train StackGAN, pretrain DAMSM, train AttnGAN with it, copy each run's export/ into checkpoints/.
# Budgets (optimizer steps) default to what the bundled weights got on a shared 2-core CPU; raise them on a
# faster machine:  STACKGAN_STEPS=20000 DAMSM_STEPS=1500 ATTNGAN_STEPS=20000 configs/t2i/make_shapes_gan_checkpoints.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T2I=${T2I:-.venv/bin/t2i}
run_of() { sed -n 's/^run folder: \([^ ]*\).*/\1/p' "$1" | tail -n1; }

$T2I data encode shapes --num 10000            # pre-encode the training captions once (cached on disk)
$T2I train configs/t2i/shapes_stackgan.yaml --max-steps "${STACKGAN_STEPS:-3200}" --no-progress | tee /tmp/stackgan.out
$T2I train configs/t2i/shapes_damsm.yaml train.batch_size=32 --max-steps "${DAMSM_STEPS:-100}" --no-progress \
  | tee /tmp/damsm.out
$T2I train configs/t2i/shapes_attngan.yaml "model.damsm_checkpoint=$(run_of /tmp/damsm.out)" \
  --max-steps "${ATTNGAN_STEPS:-1650}" --no-progress | tee /tmp/attngan.out
for m in stackgan attngan; do
  rm -rf "checkpoints/shapes64/$m"
  cp -r "$(run_of /tmp/$m.out)/export" "checkpoints/shapes64/$m"
  du -sh "checkpoints/shapes64/$m"
done
