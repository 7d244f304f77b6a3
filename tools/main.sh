#!/usr/bin/env bash
# Set up (idempotent), then the main job: train a small ConvMixer on
# Fashion-MNIST, evaluate its final checkpoint and classify a real test
# image with it.
#   WORK_DIR (default work_dirs/fashion-mnist) receives logs, checkpoints
#   and the image; IMAGE_INDEX (default 0) picks the Fashion-MNIST test
#   image to classify.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
source tools/python.sh

CONFIG=configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py
WORK_DIR=${WORK_DIR:-work_dirs/fashion-mnist}
IMAGE_INDEX=${IMAGE_INDEX:-0}

start=$(date +%s)
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
echo "Training took $(($(date +%s) - start)) s."

CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
"$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR/test" \
    --out "$WORK_DIR/test_metrics.json" --out-item metrics

IMAGE="$WORK_DIR/fashion-mnist_test_$IMAGE_INDEX.png"
"$PYTHON" - "$IMAGE" "$IMAGE_INDEX" <<'PY'
import sys

from PIL import Image

from convmixer_mm.datasets import FashionMNISTIDX

path, index = sys.argv[1], int(sys.argv[2])
test_set = FashionMNISTIDX(split='test')
sample = test_set[index]
Image.fromarray(sample['img']).save(path)
label = sample['gt_label']
print(f'{path}: Fashion-MNIST test image {index}, true label: '
      f"{test_set.metainfo['classes'][label]} (class {label})")
PY

"$PYTHON" demo/image_demo.py "$IMAGE" "$CONFIG" --pretrained "$CHECKPOINT" \
    --topk 3 --device cpu
