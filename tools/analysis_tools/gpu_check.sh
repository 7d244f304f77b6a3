#!/usr/bin/env bash
# The GPU check (issue 14), for a machine with one CUDA GPU; under 8 minutes.
#   1. the test suite's CUDA cases (tests named *cuda*);
#   2. one epoch of the Fashion-MNIST config on the GPU;
#   3. ConvMixer-1536/20, 224 px, batch 64, training step and inference, fp32
#      and bf16, ours against timm and mmpretrain, interleaved.
# Writes one JSON report, $OUT/gpu_check.json (default OUT=work_dirs/
# gpu_check): the benchmark report, which `benchmark.py --readme` takes in,
# plus "tests" and "fashion_mnist" entries. Logs go next to it.
#   FASHION_MNIST_ROOT: the IDX .gz files (default: Debian's location).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-work_dirs/gpu_check}
DATA=${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}
CONFIG=configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || {
    echo 'error: no CUDA device visible to torch: run this on a GPU machine.'
    exit 1
}

timeout 120 python -m pytest tests -q -p no:cacheprovider -k cuda \
    > "$OUT/tests.log" 2>&1
tests_rc=$?

timeout 150 python tools/train.py "$CONFIG" --work-dir "$OUT/fashion-mnist" \
    --cfg-options train_cfg.max_epochs=1 \
    train_dataloader.dataset.data_root="$DATA" \
    val_dataloader.dataset.data_root="$DATA" \
    test_dataloader.dataset.data_root="$DATA" > "$OUT/train.log" 2>&1
train_rc=$?

timeout 240 python tools/analysis_tools/benchmark.py 1536/20 --device cuda \
    --batch-size 64 --img-size 224 --mode both --warmup 3 --rounds 10 \
    --candidates ours+cl ours+cl+fuse mmpretrain mmpretrain+cl timm \
    timm+cl ours+cl+bf16 ours+cl+fuse+bf16 mmpretrain+bf16 \
    mmpretrain+cl+bf16 timm+bf16 timm+cl+bf16 \
    --out "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1
bench_rc=$?

python - "$OUT" "$tests_rc" "$train_rc" "$bench_rc" <<'PY'
import json
import os.path as osp
import re
import sys

out, tests_rc, train_rc, bench_rc = sys.argv[1], *map(int, sys.argv[2:])


def tail(name):
    with open(osp.join(out, name)) as f:
        return f.read().splitlines()[-3:]


path = osp.join(out, 'benchmark.json')
report = {}
if bench_rc == 0:
    with open(path) as f:
        report = json.load(f)
report['benchmark'] = dict(rc=bench_rc, tail=tail('benchmark.log'))
report['tests'] = dict(rc=tests_rc, tail=tail('tests.log'))
with open(osp.join(out, 'train.log')) as f:
    accuracy = re.findall(r'accuracy/top1: ([\d.]+)', f.read())
report['fashion_mnist'] = dict(
    rc=train_rc, epochs=1, top1=float(accuracy[-1]) if accuracy else None,
    tail=tail('train.log'))
with open(osp.join(out, 'gpu_check.json'), 'w') as f:
    json.dump(report, f, indent=1)
print(json.dumps({k: report[k] for k in ('tests', 'fashion_mnist',
                                         'benchmark')}, indent=1))
PY
echo "Wrote $OUT/gpu_check.json"
exit $((tests_rc | train_rc | bench_rc))
