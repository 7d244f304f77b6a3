# Copyright (c) convmixer_mm contributors. All rights reserved.
"""mmpretrain's own entry points given our models and weights."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import mmpretrain
from convmixer_mm.engine import CompileModelHook
from convmixer_mm.engine.checkpoint import CheckpointError, from_mm_layout
from convmixer_mm.models import ConvMixerMM

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FASHION_CONFIG = osp.join(ROOT, 'configs', 'convmixer',
                          'convmixer-128-4-p4_1xb128_fashion-mnist.py')
needs_fashion_mnist = pytest.mark.skipif(
    not glob.glob('/usr/share/datasets/fashion-mnist/t10k-images*'),
    reason='needs dataset-fashion-mnist (bash tools/install.sh)')


@pytest.mark.parametrize('layout', ['official', 'timm'])
def test_mmpretrain_get_model_converts_any_layout(layout, tmp_path):
    torch.manual_seed(0)
    ref = mmpretrain.get_model(FASHION_CONFIG)
    path = str(tmp_path / f'{layout}.pth')
    torch.save(from_mm_layout(ref.state_dict(), layout), path)
    got = mmpretrain.get_model(FASHION_CONFIG, pretrained=path)
    assert got.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key


def test_mmpretrain_get_model_refuses_a_broken_official_file(tmp_path):
    state = from_mm_layout(mmpretrain.get_model(FASHION_CONFIG).state_dict(),
                           'official')
    state['0.weight'] = state['0.weight'][:, :, :2]  # a truncated stem
    path = str(tmp_path / 'broken.pth')
    torch.save(state, path)
    with pytest.raises(CheckpointError,
                       match=r'(?s)official layout\) does not convert.*'
                       r'python tools/model_converters/convmixer_to_mm.py '):
        mmpretrain.get_model(FASHION_CONFIG, pretrained=path)


NOISE = ('MultiScaleDeformableAttention', 'to_onehot', 'paramwise_options',
         'FileClient', 'HardDiskBackend', 'The prefix is not set',
         'GPU number')


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """An untrained Fashion-MNIST checkpoint, as tools/train.py saves it."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny.pth')
    model = mmpretrain.get_model(FASHION_CONFIG)
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return path


def run_test_py(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, 'tools/test.py', FASHION_CONFIG, *args,
         '--cfg-options', 'test_dataloader.dataset.indices=100',
         'test_dataloader.batch_size=50'],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@needs_fashion_mnist
@pytest.mark.slow
def test_test_py_is_quiet(tiny_checkpoint, tmp_path):
    out = run_test_py(tiny_checkpoint, '--work-dir', str(tmp_path), '--out',
                      str(tmp_path / 'full.pkl'))
    for noise in NOISE:
        assert noise not in out
    assert 'CPU processes: 1' in out
    if not torch.cuda.is_available():
        assert "dist_cfg: {'backend': 'gloo'}" in out
    assert 'nccl' not in out
    assert re.search(r'accuracy/top1: [\d.]+', out)


@needs_fashion_mnist
@pytest.mark.slow
@pytest.mark.parametrize('tta', [False, True])
def test_test_py_compact_out(tiny_checkpoint, tmp_path, tta):
    out = str(tmp_path / 'preds.npz')
    log = run_test_py(tiny_checkpoint, '--work-dir', str(tmp_path), '--out',
                      out, *(['--tta'] if tta else []))
    preds = np.load(out)
    assert preds['pred_score'].shape == (100, 10)
    assert preds['pred_score'].dtype == np.float32
    np.testing.assert_array_equal(preds['pred_label'],
                                  preds['pred_score'].argmax(1))
    assert set(preds['gt_label']) <= set(range(10))
    # The arrays reproduce the logged accuracy.
    top1 = float(re.search(r'accuracy/top1: ([\d.]+)', log).group(1))
    assert 100 * (preds['pred_label'] == preds['gt_label']).mean() == (
        pytest.approx(top1, abs=1e-3))
    # Small: about 60 bytes per image, where the .pkl holds whole samples.
    assert os.path.getsize(out) < 100 * 100


@pytest.mark.slow
def test_test_py_help_names_the_out_forms_and_options():
    result = subprocess.run([sys.executable, 'tools/test.py', '--help'],
                            capture_output=True, text=True, cwd=ROOT)
    text = ' '.join(result.stdout.split())
    assert 'FILE.npz: compact predictions' in text
    for option in ('--show', '--wait-time', '--tta', '--show-dir'):
        assert option in text


@pytest.mark.slow
def test_test_py_rejects_an_unknown_out_format(tiny_checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, 'tools/test.py', FASHION_CONFIG, tiny_checkpoint,
         '--out', str(tmp_path / 'preds.csv')],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'error: --out {tmp_path / "preds.csv"}: predictions are written to '
        'FILE.npz (compact arrays) or FILE.pkl (full samples); for the '
        'metrics add --out-item metrics.'
    ]
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_no_onehot_message_at_inference():
    # The ImageNet configs train with Mixup/CutMix; building them for
    # inference must not talk about one-hot labels.
    config = osp.join(ROOT, 'configs', 'convmixer',
                      'convmixer-1024-20_10xb64_in1k.py')
    code = (
        'import mmpretrain, convmixer_mm\n'
        f'm = mmpretrain.get_model({config!r}, backbone=dict(arch=dict('
        '_delete_=True, embed_dims=16, depth=2, patch_size=14, '
        'kernel_size=9)), head=dict(in_channels=16))\n'
        'assert m.data_preprocessor.batch_augments is not None\n')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'to_onehot' not in result.stdout + result.stderr


@needs_fashion_mnist
@pytest.mark.slow
def test_training_logs_by_time_as_well_as_by_iteration(tmp_path):
    # time_interval=0: a line after every iteration although interval=100;
    # scalars.json keeps only the regular (end of epoch) entry.
    result = subprocess.run(
        [sys.executable, 'tools/train.py', FASHION_CONFIG, '--work-dir',
         str(tmp_path), '--no-validate', '--cfg-options',
         'train_dataloader.dataset.indices=128',
         'train_dataloader.batch_size=32', 'train_cfg.max_epochs=1',
         'default_hooks.logger.interval=100',
         'default_hooks.logger.time_interval=0'],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    lines = re.findall(r'Epoch\(train\) \[1\]\[(\d)/4\].*eta: \d', log)
    assert lines == ['1', '2', '3', '4']
    for noise in NOISE:
        assert noise not in log
    scalars = glob.glob(str(tmp_path / '*' / 'vis_data' / 'scalars.json'))
    with open(scalars[0]) as f:
        assert len(f.readlines()) == 1


@pytest.mark.slow
def test_compile_model_hook_with_cp_trains_like_eager():
    # dynamo cannot trace a checkpoint context_fn: under torch.compile the
    # blocks use the plain non-reentrant checkpoint, and the BN statistics
    # must still take one momentum step per iteration.
    torch.manual_seed(0)
    arch = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=3)
    plain = ConvMixerMM(arch, out_indices=(0, 1)).train()
    compiled = ConvMixerMM(arch, out_indices=(0, 1), with_cp=True).train()
    compiled.load_state_dict(plain.state_dict())
    net = torch.nn.Module()
    net.backbone = compiled
    CompileModelHook(backend='aot_eager').before_run(
        types.SimpleNamespace(model=net))
    for _ in range(2):
        x = torch.randn(4, 3, 16, 16)
        outs = [model(x.clone().requires_grad_()) for model in (plain,
                                                                 compiled)]
        for out in outs:
            sum(o.square().sum() for o in out).backward()
        for a, b in zip(*outs):
            assert torch.equal(a, b)
    for (name, p), q in zip(plain.named_parameters(), compiled.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(plain.named_buffers(), compiled.buffers()):
        assert torch.equal(b, c), name
