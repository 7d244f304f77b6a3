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

from convmixer_mm.cli import launch

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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not osp.isdir('/usr/share/datasets/fashion-mnist'),
        reason='needs dataset-fashion-mnist (bash tools/install.sh)')
]


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


def _children(pid: int, name: str) -> list:
    """The live child processes of ``pid`` whose command line has
    ``name``."""
    found = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as f:
                fields = f.read().rpartition(')')[2].split()
            with open(stat.replace('stat', 'cmdline'), 'rb') as f:
                cmdline = f.read().decode(errors='replace')
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != 'Z' and name in cmdline:
            found.append(int(stat.split('/')[2]))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _dist_train(work_dir, *args: str, **kwargs):
    """``tools/dist_train.sh CONFIG 2`` on CPU (gloo), as a process."""
    env = dict(os.environ, PORT=str(free_port()))
    return subprocess.Popen([
        'bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir',
        str(work_dir), '--no-validate', *args
    ],
                            cwd=ROOT,
                            env=env,
                            **kwargs)


def _torchrun_and_workers(script: subprocess.Popen) -> tuple:
    """Wait until torchrun has started both workers; their pids."""
    found = {}

    def started():
        found['agent'] = _children(script.pid, 'torch.distributed.run')
        found['workers'] = [
            pid for agent in found['agent']
            for pid in _children(agent, 'train.py')
        ]
        return len(found['workers']) == 2

    assert _wait_for(started, 300), 'torchrun did not start two workers'
    [agent] = found['agent']
    return agent, found['workers']


@pytest.mark.slow
def test_dist_train_ends_when_a_worker_dies_and_resumes(tmp_path):
    """kill -9 of one worker ends the whole run within seconds (not a
    hang in the other worker's all-reduce), and --resume continues."""
    options = [
        '--cfg-options', 'train_dataloader.dataset.indices=1024',
        'train_cfg.max_epochs=4'
    ]
    script = _dist_train(
        tmp_path,
        *options,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        _, workers = _torchrun_and_workers(script)
        assert _wait_for(lambda: osp.exists(tmp_path / 'epoch_1.pth'), 600)
        os.kill(workers[1], signal.SIGKILL)
        # Generous on a loaded machine; a hang would never end.
        assert script.wait(timeout=120) != 0
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert not osp.exists(tmp_path / 'epoch_4.pth')
    resumed = _dist_train(
        tmp_path,
        '--resume',
        *options,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True)
    log = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert re.search(r'resumed epoch: [123], iter: ', log)
    assert osp.isfile(tmp_path / 'epoch_4.pth')


@pytest.mark.slow
def test_workers_exit_when_torchrun_is_killed(tmp_path):
    """kill -9 of torchrun must not leave its workers training."""
    script = _dist_train(
        tmp_path,
        '--cfg-options',
        'train_dataloader.dataset.indices=1024',
        'train_cfg.max_epochs=1000',
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    agent, workers = None, []
    try:
        agent, workers = _torchrun_and_workers(script)
        # Training has started once the first checkpoint is written.
        assert _wait_for(lambda: osp.exists(tmp_path / 'epoch_1.pth'), 600)
        os.kill(agent, signal.SIGKILL)
        assert _wait_for(lambda: not any(map(_alive, workers)), 30), \
            'the workers outlived torchrun'
    finally:
        for pid in [p for p in [agent, *workers] if p and _alive(p)]:
            os.kill(pid, signal.SIGKILL)
        script.wait(timeout=60)


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
        str(out), '--force'
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


@pytest.mark.parametrize('option, message', [
    ('train_cfg.max_epoch=2', "the config has no 'train_cfg.max_epoch'. "
     'Did you mean train_cfg.max_epochs?'),
    ('train_dataloader.batch_sizee=64', 'Did you mean '
     'train_dataloader.batch_size?'),
    ('train_cfg.max_epochs=abc', 'train_cfg.max_epochs must be of type int'),
    ('train_cfg.max_epochs=2.5', 'train_cfg.max_epochs must be of type int'),
    ('train_dataloader.dataset.indicess=10',
     "FashionMNISTIDX takes no argument 'indicess'; it takes indices"),
    ('train_dataloader.num_workerz=1', 'Did you mean '
     'train_dataloader.num_workers?'),
    ('model.backbone.drop_pth_rate=0.1',
     "ConvMixerMM takes no argument 'drop_pth_rate'; it takes "
     'drop_path_rate'),
    ('optim_wrapper.optimizer.lr=fast', 'optim_wrapper.optimizer.lr must '
     'be of type float'),
])
def test_bad_cfg_options_fail_before_writing(option, message, tmp_path,
                                             capsys):
    work_dir = tmp_path / 'work'
    assert launch.train([CONFIG, '--work-dir',
                         str(work_dir), '--cfg-options', option]) == 1
    line = _error_line(capsys)
    assert line.startswith(f'error: --cfg-options {option}: '), line
    assert message in line
    assert not work_dir.exists()


@pytest.mark.parametrize('override, message', [
    ("train_cfg = dict(max_epochs='abc')",
     "train_cfg.max_epochs='abc' in the config file {}: max_epochs must be "
     'of type int. Fix the config file.'),
    ('train_dataloader = dict(batch_sizee=3)',
     "train_dataloader.batch_sizee=3 in the config file {}: DataLoader "
     "takes no argument 'batch_sizee'; it takes batch_size"),
    ("model = dict(backbone=dict(arch='9/9'))",
     "the model of the config file {} does not build: Unknown ConvMixer "
     "arch '9/9'"),
])
def test_bad_values_in_the_config_file_are_blamed_on_it(
        override, message, tmp_path, capsys):
    config = tmp_path / 'bad.py'
    config.write_text(f'_base_ = {CONFIG!r}\n{override}\n')
    work_dir = tmp_path / 'work'
    # An unrelated, valid option must not take the blame.
    assert launch.train([
        str(config), '--work-dir',
        str(work_dir), '--cfg-options', 'train_dataloader.dataset.indices=8'
    ]) == 1
    line = _error_line(capsys)
    assert line.startswith('error: ' + message.format(config)), line
    assert not work_dir.exists()


def test_missing_imagenet_fails_before_writing(tmp_path, capsys):
    """The README's evaluation command without data/imagenet."""
    checkpoint = tmp_path / 'weights.pth'
    torch.save({'state_dict': {}}, checkpoint)
    imagenet = osp.join(ROOT, 'configs', 'convmixer',
                        'convmixer-768-32_10xb64_in1k.py')
    work_dir = tmp_path / 'work'
    root = str(tmp_path / 'imagenet')
    assert launch.test([
        imagenet,
        str(checkpoint), '--work-dir',
        str(work_dir), '--cfg-options',
        f'test_dataloader.dataset.data_root={root}'
    ]) == 1
    line = _error_line(capsys)
    assert line == (
        f'error: {root!r} does not exist: put the data set there or set '
        'test_dataloader.dataset.data_root=DIR with --cfg-options '
        f'(test_dataloader.dataset from --cfg-options '
        f'test_dataloader.dataset.data_root={root}).')
    assert not work_dir.exists()


def test_every_shipped_config_passes_the_checks(tmp_path):
    """No false alarm: with its data in place, each config is accepted."""
    from convmixer_mm.engine.validate import check_config
    fields = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    for path in sorted(
            glob.glob(osp.join(ROOT, 'configs', '[!_]*', '[!_]*.py'))):
        cfg = launch.load_config(path)
        for field in fields:
            if cfg.get(field) is None:
                continue
            dataset = cfg[field].dataset
            if dataset.get('data_root', '').startswith('data/'):
                root = tmp_path / osp.basename(dataset.data_root)
                for split in ('train', 'val'):
                    (root / split).mkdir(parents=True, exist_ok=True)
                dataset.data_root = str(root)
        check_config(cfg, launch.load_config(path), None, path, fields)


def test_valid_cfg_options_pass_the_checks():
    """New keys the receiving class takes, None for "the default" and an
    int for a float are no errors."""
    from convmixer_mm.engine.validate import check_config
    options = {
        'randomness.seed': None,
        'model.backbone.drop_path_rate': 0.1,
        'train_dataloader.dataset.indices': 8,
        'optim_wrapper.optimizer.lr': 1,
        'train_dataloader.persistent_workers': False,
        'param_scheduler.0.by_epoch': True,
        # Close to 'type', but the optimizer wrapper takes it.
        'optim_wrapper.dtype': 'bfloat16',
    }
    cfg = launch.load_config(CONFIG)
    cfg.optim_wrapper.type = 'MixedPrecisionOptimWrapper'
    launch.merge_cfg_options(cfg, options)
    check_config(cfg, launch.load_config(CONFIG), options, CONFIG,
                 ['train_dataloader'])
