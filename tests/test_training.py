# Copyright (c) convmixer_mm contributors. All rights reserved.
"""tools/train.py, tools/test.py and tools/dist_train.sh on real
Fashion-MNIST; resuming after a kill; clear errors for bad input."""
import glob
import json
import os
import os.path as osp
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from mmengine.logging import MMLogger

from convmixer_mm.engine import launch

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')
CONFIG = osp.join(ROOT, 'configs', 'convmixer',
                  'convmixer-128-4-p4_1xb128_fashion-mnist.py')
# 5,000 training and 1,000 test images, two epochs: 80 iterations.
SUBSET = [
    'train_dataloader.dataset.indices=5000',
    'val_dataloader.dataset.indices=1000', 'train_cfg.max_epochs=2',
    'default_hooks.logger.interval=10'
]
# Measured here: 76.8% top-1 (78.1% with batch 64); chance is 10%.
MIN_ACCURACY = 70.0

pytestmark = pytest.mark.skipif(
    not osp.isdir('/usr/share/datasets/fashion-mnist'),
    reason='needs dataset-fashion-mnist (bash tools/install.sh)')


def run_tool(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args],
                          capture_output=True,
                          text=True,
                          cwd=ROOT,
                          **kwargs)


def accuracies(log: str) -> list:
    return [float(a) for a in re.findall(r'accuracy/top1: ([\d.]+)', log)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('train'))
    result = run_tool('tools/train.py', CONFIG, '--work-dir', work_dir,
                      '--cfg-options', *SUBSET)
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir, result.stdout + result.stderr


def test_train_reaches_accuracy(trained):
    work_dir, log = trained
    accs = accuracies(log)
    assert len(accs) == 2
    assert accs[-1] >= MIN_ACCURACY
    assert re.search(r'Epoch\(train\) \[2\]\[40/40\].*eta: 0:00:00', log)
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))
    vis_data = glob.glob(osp.join(work_dir, '*', 'vis_data'))
    assert len(vis_data) == 1
    assert osp.isfile(osp.join(vis_data[0], 'scalars.json'))


def test_test_reproduces_accuracy(trained, tmp_path):
    work_dir, log = trained
    out = str(tmp_path / 'metrics.json')
    result = run_tool('tools/test.py', CONFIG,
                      osp.join(work_dir, 'epoch_2.pth'), '--work-dir',
                      str(tmp_path), '--out', out, '--out-item', 'metrics',
                      '--cfg-options', 'test_dataloader.dataset.indices=1000')
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        metrics = json.load(f)
    assert metrics['accuracy/top1'] == pytest.approx(accuracies(log)[-1])
    # mmengine's progress bar: "[>>>>] 4/4, 9.8 task/s, elapsed: 0s, ETA:"
    assert re.search(r'\] 4/4, .*ETA:', result.stdout)


def test_resume_after_kill(tmp_path):
    work_dir = str(tmp_path / 'work')
    options = [
        'train_dataloader.dataset.indices=320', 'train_cfg.max_epochs=3',
        'train_dataloader.batch_size=64'
    ]
    args = [
        sys.executable, 'tools/train.py', CONFIG, '--work-dir', work_dir,
        '--no-validate', '--cfg-options', *options
    ]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = osp.join(work_dir, 'last_checkpoint')
    try:
        while not osp.exists(pointer) and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Checkpoints are written atomically, so each one on disk is complete:
    # the newest is what --resume auto must continue from.
    epochs = [
        int(m.group(1)) for m in map(
            re.compile(r'epoch_(\d+)\.pth').fullmatch, os.listdir(work_dir))
        if m
    ]
    epoch = max(epochs)
    saved = torch.load(osp.join(work_dir, f'epoch_{epoch}.pth'))
    assert saved['meta']['epoch'] == epoch
    assert epoch < 3, 'the kill came too late to test resuming'
    # mmengine writes the pointer in place; a kill at that instant leaves
    # it empty, and resuming must still find the last checkpoint.
    open(pointer, 'w').close()
    result = run_tool(*args[1:], '--resume')
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f'resumed epoch: {epoch}, iter: {epoch * 5}' in log
    assert f'Epoch(train) [{epoch + 1}][5/5]' in log
    assert f'Epoch(train) [{epoch}][' not in log
    final = torch.load(osp.join(work_dir, 'epoch_3.pth'))
    assert (final['meta']['epoch'], final['meta']['iter']) == (3, 15)
    [scheduler] = final['param_schedulers']
    assert scheduler['last_step'] == 14


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_dist_train_two_processes_on_cpu(tmp_path):
    env = dict(os.environ, PORT=str(free_port()))
    result = subprocess.run([
        'bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir',
        str(tmp_path), '--cfg-options',
        'train_dataloader.dataset.indices=1024',
        'val_dataloader.dataset.indices=512', 'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=2'
    ],
                            capture_output=True,
                            text=True,
                            cwd=ROOT,
                            env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    # 1,024 images in batches of 128 over 2 processes: 4 iterations each.
    assert 'Epoch(train) [1][4/4]' in log
    assert 'Distributed training: True' in log
    assert len(accuracies(log)) == 1
    assert osp.isfile(tmp_path / 'epoch_1.pth')


@pytest.fixture
def capsys(capsys):
    """pytest's ``capsys``, forgetting mmengine's loggers afterwards.

    A runner built in-process binds its loggers to the captured stream,
    which pytest closes after the test; a later test logging through them
    would make ``logging`` print a "Logging error" traceback.
    """
    yield capsys
    MMLogger._instance_dict.clear()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    return err.strip().splitlines()[-1]


def test_missing_config(capsys):
    assert launch.train(['configs/nothing.py']) == 1
    assert re.match(r"error: config 'configs/nothing.py' does not exist: "
                    'pass a config file', _error_line(capsys))


def test_missing_data_directory(tmp_path, capsys):
    sentinel = tmp_path / 'epoch_1.pth'
    sentinel.write_bytes(b'an earlier run')
    assert launch.train([
        CONFIG, '--work-dir',
        str(tmp_path), '--cfg-options',
        'train_dataloader.dataset.data_root=/nonexistent/fmnist'
    ]) == 1
    line = _error_line(capsys)
    assert "not found in '/nonexistent/fmnist'" in line
    assert 'apt-get install dataset-fashion-mnist' in line
    assert sentinel.read_bytes() == b'an earlier run'


def test_bad_checkpoints(trained, tmp_path, capsys):
    work_dir, _ = trained
    out = tmp_path / 'results.pkl'
    out.write_bytes(b'earlier results')
    truncated = tmp_path / 'truncated.pth'
    with open(osp.join(work_dir, 'epoch_2.pth'), 'rb') as f:
        truncated.write_bytes(f.read()[:5000])
    assert launch.test([
        CONFIG,
        str(truncated), '--work-dir',
        str(tmp_path / 'w1'), '--out',
        str(out)
    ]) == 1
    assert 'is corrupt or truncated' in _error_line(capsys)
    assert out.read_bytes() == b'earlier results'
    assert not osp.exists(tmp_path / 'w1')
    # The Fashion-MNIST checkpoint into a 64-channel model.
    assert launch.test([
        CONFIG,
        osp.join(work_dir, 'epoch_2.pth'), '--work-dir',
        str(tmp_path / 'w2'), '--cfg-options',
        'model.backbone.arch.embed_dims=64', 'model.head.in_channels=64',
        'test_dataloader.dataset.indices=10'
    ]) == 1
    line = _error_line(capsys)
    assert 'does not fit the model of this config' in line
    assert 'use the config it was trained with' in line
    # --resume from a corrupt file fails before anything is written.
    assert launch.train([
        CONFIG, '--work-dir',
        str(tmp_path / 'w3'), '--resume',
        str(truncated)
    ]) == 1
    assert 'is corrupt or truncated' in _error_line(capsys)
    assert not osp.exists(tmp_path / 'w3')


def test_invalid_cfg_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.train([CONFIG, '--cfg-options', 'train_cfg.max_epochs'])
    assert exit_info.value.code == 2
    assert "'train_cfg.max_epochs' is not KEY=VALUE" in capsys.readouterr(
    ).err
    assert launch.train([
        CONFIG, '--work-dir',
        str(tmp_path), '--cfg-options', 'trian_cfg.max_epochs=1'
    ]) == 1
    assert _error_line(capsys).startswith(
        "error: --cfg-options trian_cfg.max_epochs=...: the config has no "
        "'trian_cfg'. Did you mean train_cfg")
    assert not os.listdir(tmp_path)
    assert launch.train([
        CONFIG, '--work-dir',
        str(tmp_path), '--cfg-options', 'model.backbone.arch=999/9'
    ]) == 1
    assert "Unknown ConvMixer arch '999/9'" in _error_line(capsys)
    assert not os.listdir(tmp_path)
