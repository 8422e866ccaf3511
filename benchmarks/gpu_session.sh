#!/usr/bin/env bash
# One short GPU lease, used whole: GPU training throughput of the Shapes recipes, then the four image families
# trained side by side on the one GPU until a wall-clock deadline, each stopping cleanly (train.max_minutes) with a
# checkpoint, an fp16 export, a sample grid and its in-training metrics; the exports come back packed per run.
#
#   OUT=runs/gpu END_S=470 bash benchmarks/gpu_session.sh
#
# END_S: seconds after the start at which the training jobs stop (the final save, evaluation and packing take ~30 s
# more). The GANs start from scratch with their recipes unchanged; the diffusion model and the VQ prior go on from
# the bundled weights (train.init_from) at batch 128, which a GPU runs at little extra cost per step.
# Where only part of the tree can travel: a bundle named by train.init_from must travel whole (on 2026-11-28 the
# diffusion job refused checkpoints/shapes64/diffusion without its vqvae/: "a pixel-space UNet").
# A dry run on a CPU machine: REQUIRE_CUDA=0 BENCH=0 FINAL_EVAL=0 END_S=0 MMGAN_CACHE=~/.cache/mmgan bash ...
# On the project's lent GPU machine (no package index there) it first installs carried wheels (.whl/) and unpacks
# the text encoder's stand-in (.devcarry/): see benchmarks/device_carry.py.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${OUT:-runs/gpu}
RUNS=${RUNS:-$OUT/runs}  # run folders (full checkpoints: large); $OUT keeps what is worth fetching
END_S=${END_S:-470}
PY=${PY:-python3}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export MMGAN_CACHE=${MMGAN_CACHE:-/tmp/mmgan-cache}
log() { echo "[$(($(date +%s) - T0))s] $*"; }

if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if [ -f .devcarry/minilm16.tgz ]; then  # made by `python benchmarks/device_carry.py pack` on the CPU machine
  $PY benchmarks/device_carry.py unpack || exit 1
  export PYTHONPATH=/tmp/devsite:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# Fail fast (seconds, not minutes of a lease) when the environment is not what the jobs need.
$PY - <<'EOF' || exit 1
import torch, diffusers, transformers, accelerate
import t2i.train, t2i.train_baselines, t2i.models.diffusion, t2i.models.vqgan
from t2i.text import TextEncoder
import os
assert torch.cuda.is_available() or os.environ.get("REQUIRE_CUDA") == "0", "no CUDA device"
print("torch", torch.__version__, "diffusers", diffusers.__version__, "transformers", transformers.__version__,
      "accelerate", accelerate.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
EOF
T2I="$PY -m t2i.cli"

log "encode the training captions on the GPU"
$T2I data encode shapes --num 10000 || exit 1

if [ "${BENCH:-1}" = 1 ]; then
# A 640-image pool: after the warm-up every image is drawn and cached (as in a long run after its first epoch), so
# the rate is the training step's, not the Shapes renderer's (~0.9 ms per image on one CPU core).
log "training throughput, one job at a time (recipe batch sizes)"
$PY benchmarks/train_throughput.py configs/t2i/shapes_stackgan.yaml configs/t2i/shapes_attngan.yaml \
  --precisions no bf16 --threads 2 --steps 100 --warmup 30 --set data.length=640 --json "$OUT/throughput_gans.json"
$PY benchmarks/train_throughput.py configs/t2i/shapes_diffusion.yaml configs/t2i/shapes_vq_prior.yaml \
  --precisions no bf16 --threads 2 --steps 100 --warmup 30 --set model.autoencoder=checkpoints/shapes64/vqgan data.length=640 \
  --json "$OUT/throughput_baselines.json"
fi

MIN=$($PY -c "print(round(max(0.5, ($END_S - ($(date +%s) - $T0))) / 60, 2))")
log "training side by side for $MIN minutes"
COMMON=(train.num_threads=2 train.max_minutes="$MIN" train.checkpoint_every=1000 train.sample_every=1000
        train.eval_every=$([ "${FINAL_EVAL:-1}" = 1 ] && echo 100000000 || echo 0) train.log_every=50)
job() {  # job NAME RECIPE OVERRIDES...
  local name=$1 recipe=$2; shift 2
  $T2I train "$recipe" name="$name" "${COMMON[@]}" "$@" --max-steps 10000000 --no-progress \
    --runs-dir "$RUNS" > "$OUT/$name.out" 2>&1
}
JOBS=${JOBS:-stackgan attngan attngan_ndf32 diffusion vq_prior}
PRIOR_FROM=${PRIOR_FROM:-checkpoints/shapes64/vqgan}  # the prior's starting weights (an export or bundle)
for j in $JOBS; do case $j in
  stackgan) job shapes_stackgan_gpu configs/t2i/shapes_stackgan.yaml & ;;
  attngan) job shapes_attngan_gpu configs/t2i/shapes_attngan.yaml & ;;
  attngan_ndf32) job shapes_attngan_ndf32_gpu configs/t2i/shapes_attngan.yaml model.ndf=32 & ;;
  diffusion) job shapes_diffusion_gpu configs/t2i/shapes_diffusion.yaml model.autoencoder=checkpoints/shapes64/vqgan \
    train.init_from=checkpoints/shapes64/diffusion train.batch_size=128 train.lr_g=0.0001 & ;;
  vq_prior) job shapes_vq_prior_gpu configs/t2i/shapes_vq_prior.yaml model.autoencoder=checkpoints/shapes64/vqgan \
    train.init_from="$PRIOR_FROM" train.batch_size=128 & ;;
  *) echo "unknown job $j"; exit 2 ;;
esac; done
wait
log "jobs done; packing (one .tgz per run: export/, config, train.log, metrics, last sample grid, console output)"
for run in "$RUNS"/*/; do
  name=$(basename "$run"); name=${name%-000}
  cp "$OUT/$name.out" "$run/console.out" && rm "$OUT/$name.out"
  last=$(ls "$run/samples"/step-*.png 2>/dev/null | tail -n 1)
  extra=$(cd "$run" && ls metrics.jsonl 2>/dev/null)
  tar czf "$OUT/$name.tgz" -C "$run" export config.yaml train.log console.out $extra \
    ${last:+samples/$(basename "$last")} && ls -la "$OUT/$name.tgz"
  echo "== $name"; grep -v "^\s*$" "$run/console.out" | tail -n 4; tail -n 1 "$run/train.log"; cat $run/metrics.jsonl 2>/dev/null
done
for f in "$OUT"/*.out; do [ -f "$f" ] && { echo "== $f (no run folder)"; tail -n 30 "$f"; }; done
[ "$RUNS" = "$OUT/runs" ] && rm -rf "$RUNS"
log "done"
