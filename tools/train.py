# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Train a model: ``python tools/train.py CONFIG [options]`` (mmpretrain's
command line; the logic is in :mod:`convmixer_mm.cli.launch`)."""
import sys

from convmixer_mm.cli.launch import train

if __name__ == '__main__':
    sys.exit(train())
