# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Benchmark ConvMixer against mmpretrain's and timm's, side by side.

Examples::

    # fp32 inference of ConvMixer-1024/20, 224 px, batch 8, on 2 threads
    python tools/analysis_tools/benchmark.py 1024/20 --threads 2 \\
        --out work_dirs/bench/infer_1024.json
    # Training steps of the Fashion-MNIST config
    python tools/analysis_tools/benchmark.py \\
        configs/convmixer/convmixer-128-4-p4_1xb128_fashion-mnist.py \\
        --img-size 28 --batch-size 128 --mode train
    # Write the README's Performance section from saved reports
    python tools/analysis_tools/benchmark.py --readme README.md \\
        work_dirs/bench/*.json

The logic lives in :mod:`convmixer_mm.devtools.benchmark`.
"""
import sys

from convmixer_mm.cli import run
from convmixer_mm.devtools.benchmark import main

if __name__ == '__main__':
    sys.exit(run(main))
