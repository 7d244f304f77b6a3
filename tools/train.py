# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Train a model: ``python tools/train.py CONFIG [options]`` (mmpretrain's
command line; the logic is in :mod:`convmixer_mm.cli.launch`)."""
import sys
import warnings

# mmcv-lite lacks compiled ops that ConvMixer never uses.
warnings.filterwarnings('ignore', 'Fail to import ``MultiScaleDeformable')
from convmixer_mm.cli.launch import train  # noqa: E402

if __name__ == '__main__':
    sys.exit(train())
