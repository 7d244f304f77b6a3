#!/usr/bin/env bash
# Re-measure the README's Performance section: the interleaved runs
# behind its targets (2 torch threads), then regenerate the section.
# Takes tens of minutes on 2 CPU cores. Reports go to docs/benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOL=tools/analysis_tools/benchmark.py
OUT=docs/benchmarks
mkdir -p "$OUT"

# ConvMixer-1024/20 inference: ours (fused, channels_last; fp32 and bf16)
# against mmpretrain's built-in and timm's, each contiguous and
# channels_last.
python "$TOOL" 1024/20 --threads 2 --batch-size 8 --img-size 224 \
    --rounds "${ROUNDS_1024:-10}" --profile \
    --candidates ours+cl+fuse ours+cl+fuse+bf16 ours+cl ours mmpretrain \
    timm mmpretrain+cl timm+cl \
    --out "$OUT/convmixer-1024-20_b8_inference.json"

# Training steps of the Fashion-MNIST config's model.
python "$TOOL" configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py \
    --threads 2 --img-size 28 --batch-size 128 --mode train \
    --rounds "${ROUNDS_FASHION:-24}" --profile \
    --candidates ours+cl+compile ours+cl ours mmpretrain mmpretrain+cl \
    mmpretrain+cl+compile timm timm+cl \
    --out "$OUT/fashion-mnist_b128_train.json"

# Training steps of the ImageNet models (batch 8 for 1024/20, batch 2 for
# the two 32x32-token models, which are 4 to 9 times slower per image).
python "$TOOL" 1024/20 --threads 2 --batch-size 8 --img-size 224 \
    --mode train --rounds "${ROUNDS_TRAIN:-5}" --warmup 1 --profile \
    --candidates ours+cl mmpretrain timm mmpretrain+cl timm+cl \
    --out "$OUT/convmixer-1024-20_b8_train.json"
for arch in 768/32 1536/20; do
    python "$TOOL" "$arch" --threads 2 --batch-size 2 --img-size 224 \
        --mode train --rounds "${ROUNDS_TRAIN:-3}" --warmup 1 \
        --candidates ours+cl mmpretrain timm mmpretrain+cl timm+cl \
        --out "$OUT/convmixer-${arch/\//-}_b2_train.json"
done

# with_cp memory of 768/32 at batch 32 (64 px: 224 px needs ~22 GB
# without checkpointing).
python "$TOOL" 768/32 --threads 2 --batch-size 32 --img-size 64 \
    --mode train --rounds "${ROUNDS_768:-3}" \
    --candidates ours+cp ours mmpretrain \
    --out "$OUT/convmixer-768-32_b32_64px_train_memory.json"

python "$TOOL" --readme README.md \
    "$OUT/convmixer-1024-20_b8_inference.json" \
    "$OUT/fashion-mnist_b128_train.json" \
    "$OUT/convmixer-1024-20_b8_train.json" \
    "$OUT/convmixer-768-32_b2_train.json" \
    "$OUT/convmixer-1536-20_b2_train.json" \
    "$OUT/convmixer-768-32_b32_64px_train_memory.json"
