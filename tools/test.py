# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [opts]``
(mmpretrain's command line; the logic is in :mod:`convmixer_mm.cli.launch`)."""
import sys
import warnings

# mmcv-lite lacks compiled ops that ConvMixer never uses.
warnings.filterwarnings('ignore', 'Fail to import ``MultiScaleDeformable')
from convmixer_mm.cli.launch import test  # noqa: E402

if __name__ == '__main__':
    sys.exit(test())
