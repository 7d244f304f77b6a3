# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Checkpoints of our training load with weights_only on; malicious,
corrupt and mismatching ones are refused; saving is atomic."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.registry import init_default_scope

from convmixer_mm.cli.launch import train
from convmixer_mm.engine import (CheckpointError, MixedPrecisionOptimWrapper,
                                 check_fits, load_checkpoint_file)
from convmixer_mm.engine.checkpoint import SAFE_GLOBALS
from convmixer_mm.utils import atomic_save_bytes
from mmpretrain.registry import MODELS

pytestmark = pytest.mark.slow

CONFIG = osp.join(
    osp.dirname(__file__), '..', 'configs', 'convmixer',
    'convmixer-128-4-p4_1xb128_fashion-mnist.py')
TINY = [
    'model.backbone.arch.embed_dims=16', 'model.backbone.arch.depth=2',
    'model.head.in_channels=16', 'train_dataloader.dataset.indices=256',
    'val_dataloader.dataset.indices=128', 'train_cfg.max_epochs=1',
    'default_hooks.logger.interval=1'
]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint saved by one epoch of real training."""
    if not osp.isdir('/usr/share/datasets/fashion-mnist'):
        pytest.skip('needs dataset-fashion-mnist (bash tools/install.sh)')
    work_dir = tmp_path_factory.mktemp('train')
    assert train([CONFIG, '--work-dir',
                  str(work_dir), '--cfg-options', *TINY]) == 0
    return str(work_dir / 'epoch_1.pth')


def tiny_model(embed_dims: int = 16, num_classes: int = 10):
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(CONFIG)
    cfg.model.backbone.arch.update(embed_dims=embed_dims, depth=2)
    cfg.model.head.update(in_channels=embed_dims, num_classes=num_classes)
    return MODELS.build(cfg.model)


def _name(obj) -> str:
    if isinstance(obj, tuple):
        return obj[1]
    return f'{obj.__module__}.{obj.__qualname__}'


def test_training_checkpoint_loads_with_weights_only(checkpoint):
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint)
    # getattr would be in it without our HistoryBuffer pickling.
    assert 'builtins.getattr' not in unsafe
    assert set(unsafe) <= {_name(g) for g in SAFE_GLOBALS}
    # torch.load's default, weights_only=True, as mmengine calls it.
    ckpt = torch.load(checkpoint)
    assert ckpt['meta']['epoch'] == 1
    buffer = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert len(buffer.data[0]) == 2 and buffer.mean() > 0
    assert load_checkpoint_file(checkpoint)['meta']['iter'] == 2
    # No temporary file is left next to it; last_checkpoint names it.
    work_dir = osp.dirname(checkpoint)
    assert not [n for n in os.listdir(work_dir) if n.endswith('.part')]
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read() == checkpoint


class Payload:
    """Unpickling this creates a directory: stands for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


def test_malicious_checkpoint_is_refused(tmp_path, checkpoint):
    marker = str(tmp_path / 'pwned')
    evil = torch.load(checkpoint)
    evil['meta']['note'] = Payload(marker)
    path = str(tmp_path / 'evil.pth')
    torch.save(evil, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(CheckpointError, match=r'refused.*could run code'):
        load_checkpoint_file(path)
    assert not osp.exists(marker)
    # Through the command line: one error line, no traceback, no code run.
    result = subprocess.run([
        sys.executable,
        osp.join(osp.dirname(__file__), '..', 'tools', 'test.py'), CONFIG,
        path, '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', *TINY[:3]
    ],
                            capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: checkpoint')
    assert 'refused' in result.stderr
    assert not osp.exists(marker)
    assert not osp.exists(tmp_path / 'work')


def test_corrupt_truncated_and_missing(tmp_path, checkpoint):
    with open(checkpoint, 'rb') as f:
        data = f.read()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint' * 100)
    text = tmp_path / 'text.pth'
    text.write_text('hello world\n')
    for path in (truncated, garbage, text):
        with pytest.raises(CheckpointError,
                           match='is corrupt or truncated.*earlier'):
            load_checkpoint_file(str(path))
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint_file(str(tmp_path / 'missing.pth'))
    tensor = tmp_path / 'tensor.pth'
    torch.save(torch.zeros(2), str(tensor))
    with pytest.raises(CheckpointError, match='not a dict of weights'):
        load_checkpoint_file(str(tensor))


def test_checkpoint_of_another_architecture(checkpoint):
    ckpt = load_checkpoint_file(checkpoint)
    check_fits(tiny_model(), ckpt, checkpoint, strict=True)
    with pytest.raises(CheckpointError,
                       match=r'does not fit.*shape mismatches \(e.g. '
                       r'backbone.stem.0.weight: checkpoint \(16, 1, 4, 4\) '
                       r'vs model \(32, 1, 4, 4\)\).*config it was trained'):
        check_fits(tiny_model(32), ckpt, checkpoint, strict=False)
    # Fine-tuning (load_from) may change the head, testing may not.
    other_head = tiny_model(num_classes=5)
    check_fits(other_head, ckpt, checkpoint, strict=False)
    with pytest.raises(CheckpointError, match='head.fc.weight'):
        check_fits(other_head, ckpt, checkpoint, strict=True)
    with pytest.raises(CheckpointError, match='no state dict of tensors'):
        check_fits(other_head, {'state_dict': {'a': 1}}, 'x.pth', True)


def test_atomic_save_survives_a_kill(tmp_path):
    path = str(tmp_path / 'epoch_1.pth')
    torch.save({'state_dict': {'w': torch.ones(3)}}, path)
    # A process killed halfway through writing the new version.
    code = ('import os, signal, sys\n'
            'from convmixer_mm.utils import atomic_save_bytes\n'
            'def write(tmp):\n'
            '    with open(tmp, "wb") as f:\n'
            '        f.write(b"PK" * 1000)\n'
            '        f.flush()\n'
            '        os.kill(os.getpid(), signal.SIGKILL)\n'
            f'atomic_save_bytes({path!r}, write)\n')
    result = subprocess.run([sys.executable, '-c', code])
    assert result.returncode == -9
    assert torch.equal(
        load_checkpoint_file(path)['state_dict']['w'], torch.ones(3))

    def failing(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(b'partial')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_save_bytes(path, failing)
    assert torch.equal(
        load_checkpoint_file(path)['state_dict']['w'], torch.ones(3))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(
        f'.{os.getpid()}.part')]

    atomic_save_bytes(
        path, lambda tmp: torch.save({'state_dict': {'w': torch.zeros(3)}},
                                     tmp))
    assert torch.equal(
        load_checkpoint_file(path)['state_dict']['w'], torch.zeros(3))


def test_mixed_precision_wrapper_on_cpu():
    if torch.cuda.is_available():
        pytest.skip('tests the CPU path')
    model = torch.nn.Conv2d(3, 4, 3)
    wrapper = MixedPrecisionOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
        clip_grad=dict(max_norm=1.0))
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert not torch.equal(before, model.weight)
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state
    # A state saved on GPU (with a loss scaler) loads on CPU.
    state['loss_scaler'] = {'scale': 65536.0}
    wrapper.load_state_dict(state)
    with pytest.raises(ValueError, match='only bfloat16'):
        MixedPrecisionOptimWrapper(
            optimizer=torch.optim.AdamW(model.parameters()), dtype='float16')


def test_latest_checkpoint_falls_back_to_the_newest_on_disk(tmp_path):
    from convmixer_mm.engine.runner import latest_checkpoint
    assert latest_checkpoint(str(tmp_path / 'none')) is None
    assert latest_checkpoint(str(tmp_path)) is None
    for epoch in (1, 2, 10):
        (tmp_path / f'epoch_{epoch}.pth').write_bytes(b'')
        os.utime(tmp_path / f'epoch_{epoch}.pth', (epoch, epoch))
    (tmp_path / '.epoch_11.pth.123.part').write_bytes(b'')
    newest = str(tmp_path / 'epoch_10.pth')
    pointer = tmp_path / 'last_checkpoint'
    # No pointer, an empty (torn) one, or one naming a file that is gone.
    assert latest_checkpoint(str(tmp_path)) == newest
    pointer.write_text('')
    assert latest_checkpoint(str(tmp_path)) == newest
    pointer.write_text(str(tmp_path / 'moved' / 'epoch_3.pth'))
    assert latest_checkpoint(str(tmp_path)) == newest
    # A valid pointer wins, as in mmengine.
    pointer.write_text(str(tmp_path / 'epoch_2.pth'))
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / 'epoch_2.pth')
