#!/usr/bin/env bash
# Rebuild the bundled baselines checkpoints/shapes64/{vqgan,diffusion,diffusion_layout,vqgan_layout} (#5): train the VQGAN
# autoencoder (stage 1), then the text-conditioned code prior (stage 2) and the latent diffusion model on that
# autoencoder's latents, then the diffusion model's layout-stage fine-tune, and copy the exports into checkpoints/.
# `make baseline-checkpoints` runs this.
# Budgets (optimizer steps) default to what the bundled weights got on the 2-core CPU (docs/RESULTS.md); the recipes'
# own max_steps are what a GPU or a night of CPU should use:
#   VQGAN_STEPS=5000 PRIOR_STEPS=30000 DIFFUSION_STEPS=50000 LAYOUT_STEPS=50000 BOUND_STEPS=50000 configs/t2i/make_shapes_baseline_checkpoints.sh
# The prior and the diffusion model are independent once stage 1 exists: PARALLEL=1 runs them side by side.
# The bundled prior then had two more legs on an H100 at batch 128 (+427k images; benchmarks/gpu_session.sh with
# JOBS=vq_prior, see checkpoints/shapes64/vqgan/README.md): this script reproduces the CPU part.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T2I=${T2I:-.venv/bin/t2i}
OUT=${OUT:-checkpoints/shapes64}
LOGS=${LOGS:-runs/make-baseline-checkpoints}
mkdir -p "$LOGS"
run_of() { sed -n 's/^run folder: \([^ ]*\).*/\1/p' "$1" | tail -n1; }

$T2I data encode shapes --num 10000            # pre-encode the training captions once (cached on disk)
$T2I train configs/t2i/shapes_vqgan.yaml --max-steps "${VQGAN_STEPS:-1500}" --no-progress > "$LOGS/vqgan.out"
AE=$(run_of "$LOGS/vqgan.out")

prior() {
  $T2I train configs/t2i/shapes_vq_prior.yaml "model.autoencoder=$AE" --max-steps "${PRIOR_STEPS:-5500}" \
    --no-progress > "$LOGS/vq_prior.out"
}
diffusion() {
  $T2I train configs/t2i/shapes_diffusion.yaml "model.autoencoder=$AE" --max-steps "${DIFFUSION_STEPS:-28000}" \
    --no-progress > "$LOGS/diffusion_leg1.out"
  # Second leg: the EMA weights at a 4x lower learning rate (the constant-lr run had plateaued; docs/RESULTS.md).
  $T2I train configs/t2i/shapes_diffusion.yaml "model.autoencoder=$AE" name=shapes_diffusion_lowlr \
    train.lr_g=0.00005 "train.init_from=$(run_of "$LOGS/diffusion_leg1.out")" \
    --max-steps "${DIFFUSION_LOWLR_STEPS:-5000}" --no-progress > "$LOGS/diffusion.out"
}
if [ "${PARALLEL:-0}" = 1 ]; then
  prior & p=$!; diffusion & d=$!; wait "$p"; wait "$d"
else
  prior; diffusion
fi
# The VQGAN bundle is the prior's export (autoencoder + prior); the diffusion export carries the autoencoder too.
for pair in vqgan:vq_prior diffusion:diffusion; do
  m=${pair%%:*}; log=${pair##*:}
  rm -rf "${OUT:?}/$m"
  cp -r "$(run_of "$LOGS/$log.out")/export" "$OUT/$m"
  du -sh "$OUT/$m"
done
# Each bundle's default guidance, picked on validation scenes (Shapes dataset seed 1), not on the test captions.
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/guidance_sweep.py "$OUT/diffusion" --scales 2 3 5 8 --out "$LOGS/guidance_diffusion" --set-default
$PYTHON benchmarks/guidance_sweep.py "$OUT/vqgan" --scales 1 1.5 2 3 5 --metrics attribute_accuracy \
  --out "$LOGS/guidance_vqgan" --set-default
# Text -> layout -> image: the diffusion bundle fine-tuned with a layout stage in front (configs/t2i/
# shapes_diffusion_layout.yaml; it trains on the scenes' boxes, supervision the other families do not get), bundled
# beside it as diffusion_layout; its guidance picked on the validation scenes like the others'.
$T2I train configs/t2i/shapes_diffusion_layout.yaml "model.autoencoder=$AE" "train.init_from=$OUT/diffusion" \
  --max-steps "${LAYOUT_STEPS:-10000}" --no-progress > "$LOGS/diffusion_layout.out"
# ... then its second leg (configs/t2i/shapes_diffusion_layout_bound.yaml): the LayoutNet's state painted too, and a
# quarter of the rows drawn from the map alone, so the UNet takes which object is which from the map.
$T2I train configs/t2i/shapes_diffusion_layout_bound.yaml "model.autoencoder=$AE" \
  "train.init_from=$(run_of "$LOGS/diffusion_layout.out")/export" --max-steps "${BOUND_STEPS:-32000}" --no-progress \
  > "$LOGS/diffusion_layout_bound.out"
rm -rf "${OUT:?}/diffusion_layout"
cp -r "$(run_of "$LOGS/diffusion_layout_bound.out")/export" "$OUT/diffusion_layout"
du -sh "$OUT/diffusion_layout"
$PYTHON benchmarks/guidance_sweep.py "$OUT/diffusion_layout" --scales 2 3 5 8 --out "$LOGS/guidance_diffusion_layout" \
  --set-default
# The same layout stage in front of the VQGAN prior (configs/t2i/shapes_vq_prior_layout_attention.yaml: the vqgan
# bundle's prior attending over the painted map, diffusion_layout's LayoutNet), bundled beside it as vqgan_layout.
$T2I train configs/t2i/shapes_vq_prior_layout_attention.yaml "model.autoencoder=$OUT/vqgan" \
  "train.init_from=$OUT/vqgan" "model.layout_from=$OUT/diffusion_layout" --max-steps "${VQ_LAYOUT_STEPS:-2100}" \
  --no-progress > "$LOGS/vqgan_layout.out"
rm -rf "${OUT:?}/vqgan_layout"
cp -r "$(run_of "$LOGS/vqgan_layout.out")/export" "$OUT/vqgan_layout"
du -sh "$OUT/vqgan_layout"
