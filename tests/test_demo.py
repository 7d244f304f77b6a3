# Copyright (c) convmixer_mm contributors. All rights reserved.
"""demo/image_demo.py: the shipped photo, the printed top-k, bad input.

Budget: about 20 s on a quiet 2-core machine (one subprocess run).
"""
import gzip
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from timm.models.convmixer import ConvMixer as TimmConvMixer

from conftest import REPO, load_tool
from convmixer_mm.apis.converter import convert_checkpoint
from mmpretrain.datasets.categories import FASHIONMNIST_CATEGORITES

DEMO = osp.join(REPO, 'demo', 'image_demo.py')
CAT = osp.join(REPO, 'demo', 'chelsea.jpg')
BOOT = osp.join(REPO, 'demo', 'fashion-mnist_t10k-0_ankle-boot.png')
FASHION_CONFIG = osp.join(REPO, 'configs', 'convmixer',
                          'convmixer-128-4-p4_1xb128_fashion-mnist.py')
LINE = re.compile(r'^(\d+)\. (.+) \(class (\d+)\): (\d\.\d{4})$')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A converted timm model shaped like our Fashion-MNIST config."""
    folder = tmp_path_factory.mktemp('demo')
    torch.manual_seed(0)
    reference = TimmConvMixer(
        128, 4, kernel_size=5, patch_size=4, in_chans=1, num_classes=10)
    torch.save(reference.state_dict(), folder / 'timm.pth')
    converted = str(folder / 'converted.pth')
    convert_checkpoint(str(folder / 'timm.pth'), converted)
    return converted


def test_shipped_photo_is_a_real_small_jpeg():
    assert osp.getsize(CAT) < 100 * 1024
    image = cv2.imread(CAT)
    assert image.shape == (300, 451, 3)
    # A photo, not a flat placeholder.
    assert image.std() > 30


def test_shipped_fashion_mnist_image_is_the_real_one():
    """The first Fashion-MNIST test image, pixel for pixel (an ankle boot)."""
    root = '/usr/share/datasets/fashion-mnist'
    with gzip.open(osp.join(root, 't10k-images-idx3-ubyte.gz')) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16)[:784]
    with gzip.open(osp.join(root, 't10k-labels-idx1-ubyte.gz')) as f:
        label = f.read()[8]
    image = cv2.imread(BOOT, cv2.IMREAD_UNCHANGED)
    assert image.shape == (28, 28)
    np.testing.assert_array_equal(image, pixels.reshape(28, 28))
    assert FASHIONMNIST_CATEGORITES[label] == 'Ankle boot'


def parse(out):
    rows = [LINE.match(line) for line in out.strip().splitlines()[1:]]
    assert all(rows), out
    return [(int(r[1]), r[2], int(r[3]), float(r[4])) for r in rows]


def test_prints_topk(checkpoint, capsys):
    demo = load_tool('demo/image_demo.py')
    assert demo.main([
        BOOT, FASHION_CONFIG, '--pretrained', checkpoint, '--topk', '3',
        '--device', 'cpu'
    ]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'{BOOT}:\n')
    rows = parse(out)
    assert [rank for rank, *_ in rows] == [1, 2, 3]
    scores = [score for *_, score in rows]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    for _, name, label, _ in rows:
        assert name == FASHIONMNIST_CATEGORITES[label]


@pytest.mark.slow
def test_runs_as_a_command(checkpoint):
    """As tools/main.sh calls it."""
    done = subprocess.run([
        sys.executable, DEMO, CAT, FASHION_CONFIG, '--pretrained', checkpoint
    ],
                          capture_output=True,
                          text=True,
                          cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(parse(done.stdout)) == 5


@pytest.mark.parametrize(
    'case, match',
    [('missing-image', 'nope.jpg does not exist'),
     ('text-image', 'is not an image'),
     ('missing-checkpoint', 'missing.pth are not found.*wget https://'),
     ('no-weights', 'has no predefined weights')])
def test_bad_input(case, match, checkpoint, tmp_path, capsys):
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    name = 'convmixer-mm_1024-20_official-in1k'
    argv = {
        'missing-image': [
            str(tmp_path / 'nope.jpg'), FASHION_CONFIG, '--pretrained',
            checkpoint
        ],
        'text-image': [str(text), FASHION_CONFIG, '--pretrained', checkpoint],
        'missing-checkpoint':
        [CAT, name, '--pretrained',
         str(tmp_path / 'missing.pth')],
        'no-weights': [CAT, FASHION_CONFIG],
    }[case]
    demo = load_tool('demo/image_demo.py')
    assert demo.main(argv + ['--device', 'cpu']) == 1
    captured = capsys.readouterr()
    assert captured.out == ''
    assert re.search(match, captured.err), captured.err
    assert captured.err.startswith('error: ')


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available')
def test_cuda_without_a_gpu(capsys):
    demo = load_tool('demo/image_demo.py')
    assert demo.main([CAT, FASHION_CONFIG, '--device', 'cuda']) == 1
    assert 'CUDA is not available' in capsys.readouterr().err
