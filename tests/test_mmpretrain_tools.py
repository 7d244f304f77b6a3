# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Our configs, unchanged, under mmpretrain's own tools/train.py and
tools/test.py (the copies its pip package ships in ``mmpretrain/.mim``),
with TensorBoard switched on by the documented ``--cfg-options`` line."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

import mmpretrain

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')
CONFIG = osp.join(ROOT, 'configs', 'convmixer',
                  'convmixer-128-4-p4_1xb128_fashion-mnist.py')
MMPRETRAIN_TOOLS = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools')
# The line the README gives.
TENSORBOARD = 'visualizer.vis_backends.0.type=TensorboardVisBackend'

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not osp.isdir('/usr/share/datasets/fashion-mnist'),
        reason='needs dataset-fashion-mnist (bash tools/install.sh)'),
    pytest.mark.skipif(
        not osp.isfile(osp.join(MMPRETRAIN_TOOLS, 'train.py')),
        reason=f'mmpretrain ships no tools in {MMPRETRAIN_TOOLS}'),
]


def run_mmpretrain_tool(name: str, *args: str) -> str:
    # Outside our checkout, as a user of the installed package would.
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable,
         osp.join(MMPRETRAIN_TOOLS, name), *args],
        capture_output=True,
        text=True,
        cwd=osp.dirname(ROOT),
        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    pytest.importorskip('tensorboard')
    work_dir = str(tmp_path_factory.mktemp('mmpretrain_train'))
    log = run_mmpretrain_tool(
        'train.py', CONFIG, '--work-dir', work_dir, '--cfg-options',
        'train_dataloader.dataset.indices=256',
        'val_dataloader.dataset.indices=256', 'train_cfg.max_epochs=1',
        TENSORBOARD)
    return work_dir, log


def test_mmpretrain_train_py(trained):
    work_dir, log = trained
    assert re.search(r'Epoch\(val\) \[1\]\[1/1\]\s+accuracy/top1', log)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    assert glob.glob(
        osp.join(work_dir, '*', 'vis_data', 'events.out.tfevents.*'))


def test_mmpretrain_test_py(trained, tmp_path):
    work_dir, log = trained
    out = str(tmp_path / 'metrics.json')
    run_mmpretrain_tool('test.py', CONFIG, osp.join(work_dir, 'epoch_1.pth'),
                        '--work-dir', str(tmp_path), '--out', out,
                        '--out-item', 'metrics', '--cfg-options',
                        'test_dataloader.dataset.indices=256')
    with open(out) as f:
        top1 = json.load(f)['accuracy/top1']
    val = re.findall(r'Epoch\(val\).*accuracy/top1: ([\d.]+)', log)
    assert top1 == pytest.approx(float(val[-1]), abs=1e-3)
