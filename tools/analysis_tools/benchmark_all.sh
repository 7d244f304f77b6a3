#!/usr/bin/env bash
# Re-measure the README's Performance section: the interleaved runs behind
# its targets (2 torch threads), then regenerate the section. Takes about
# 45 minutes on 2 CPU cores. Reports go to docs/benchmarks/.
# `ours+cl` is the model as our configs build it: channels_last, the fast
# depthwise convolution when training, fused layers when inferring.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
TOOL=tools/analysis_tools/benchmark.py
OUT=docs/benchmarks
mkdir -p "$OUT"
run() { echo "[benchmark_all] $*" >&2; "$PY" "$TOOL" --threads 2 "$@"; }

# ImageNet training steps, 224 px, batch 8, against timm and mmpretrain.
for arch in 1024-20 768-32 1536-20; do
    run "configs/convmixer/convmixer-${arch}_10xb64_in1k.py" --mode train \
        --batch-size 8 --rounds "${ROUNDS_TRAIN:-5}" --warmup 1 --profile \
        --candidates ours+cl mmpretrain timm mmpretrain+cl timm+cl \
        --out "$OUT/convmixer-${arch}_b8_train.json"
done

# ConvMixer-1024/20 inference: ours (fp32 and bf16) against mmpretrain's
# built-in and timm's, each contiguous and channels_last.
run configs/convmixer/convmixer-1024-20_10xb64_in1k.py --batch-size 8 \
    --rounds "${ROUNDS_1024:-10}" --profile \
    --candidates ours+cl ours+cl+bf16 mmpretrain timm mmpretrain+cl timm+cl \
    --out "$OUT/convmixer-1024-20_b8_inference.json"
for arch in 768-32 1536-20; do
    run "configs/convmixer/convmixer-${arch}_10xb64_in1k.py" --batch-size 8 \
        --rounds "${ROUNDS_INFER:-6}" --candidates ours+cl mmpretrain timm \
        --out "$OUT/convmixer-${arch}_b8_inference.json"
done

# Training steps of the Fashion-MNIST config's model.
run configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py \
    --img-size 28 --batch-size 128 --mode train \
    --rounds "${ROUNDS_FASHION:-24}" --profile \
    --candidates ours+cl ours+cl+compile ours mmpretrain mmpretrain+cl \
    timm timm+cl \
    --out "$OUT/fashion-mnist_b128_train.json"

# with_cp memory of 768/32 at batch 32 (64 px: 224 px needs ~22 GB
# without checkpointing).
run 768/32 --batch-size 32 --img-size 64 --mode train \
    --rounds "${ROUNDS_768:-3}" --candidates ours+cp ours mmpretrain \
    --out "$OUT/convmixer-768-32_b32_64px_train_memory.json"

"$PY" "$TOOL" --readme README.md "$OUT"/*.json
