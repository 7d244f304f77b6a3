# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Checkpoints survive kills, bit rot, a full disk and a second run in the
same work dir; a resumed run repeats the uninterrupted one bit for bit."""
import glob
import json
import os
import os.path as osp
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from convmixer_mm.cli.launch import test as run_test
from convmixer_mm.cli.launch import train
from convmixer_mm.engine import CheckpointError, load_checkpoint_file
from convmixer_mm.engine.checkpoint import weights_only_pickling
from convmixer_mm.engine.work_dir import (WorkDirBusyError,
                                          remove_stale_parts, work_dir_lock)

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..')
CONFIG = osp.join(ROOT, 'configs', 'convmixer',
                  'convmixer-128-4-p4_1xb128_fashion-mnist.py')
# Two iterations of 32 images per epoch.
TINY = [
    'model.backbone.arch.embed_dims=16', 'model.backbone.arch.depth=2',
    'model.head.in_channels=16', 'train_dataloader.dataset.indices=64',
    'train_dataloader.batch_size=32', 'default_hooks.logger.interval=1'
]
needs_data = pytest.mark.skipif(
    not osp.isdir('/usr/share/datasets/fashion-mnist'),
    reason='needs dataset-fashion-mnist (bash tools/install.sh)')

# Runs tools/train.py, SIGKILLing itself at POINT: before or after the
# rename of the finished TARGET checkpoint, or before TARGET is removed.
KILL_AT = '''
import os, signal, sys
from convmixer_mm.cli import launch
point, target, *argv = sys.argv[1:]
name = 'remove' if point == 'before_remove' else 'replace'
real = getattr(os, name)
def call(*args, **kwargs):
    hit = os.path.basename(args[1 if name == 'replace' else 0]) == target
    if hit and point.startswith('before'):
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(os, name, call)
sys.exit(launch.train(argv))
'''


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args],
                          capture_output=True,
                          text=True,
                          cwd=ROOT,
                          **kwargs)


def error_line(result: subprocess.CompletedProcess) -> str:
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def complete_epochs(work_dir: str) -> list:
    """The epochs of the checkpoints in ``work_dir`` that load fully."""
    epochs = []
    for path in glob.glob(osp.join(work_dir, 'epoch_*.pth')):
        epoch = load_checkpoint_file(path)['meta']['epoch']
        assert osp.basename(path) == f'epoch_{epoch}.pth'
        epochs.append(epoch)
    return sorted(epochs)


def pointer(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read()


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize(
    'point, target, survivors, latest',
    [('before_rename', 'epoch_3.pth', [1, 2], 2),
     ('after_rename', 'epoch_3.pth', [1, 2, 3], 2),
     ('before_remove', 'epoch_1.pth', [1, 2, 3], 3)])
def test_kill_while_saving_keeps_max_keep_ckpts(tmp_path, point, target,
                                                survivors, latest):
    work_dir = str(tmp_path)
    args = [
        CONFIG, '--work-dir', work_dir, '--no-validate', '--cfg-options',
        *TINY, 'train_cfg.max_epochs=4',
        'default_hooks.checkpoint.max_keep_ckpts=2'
    ]
    killed = run('-c', KILL_AT, point, target, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # At least max_keep_ckpts complete checkpoints, and last_checkpoint
    # names one of them.
    assert complete_epochs(work_dir) == survivors
    assert pointer(work_dir) == osp.join(work_dir, f'epoch_{latest}.pth')
    parts = glob.glob(osp.join(work_dir, '.epoch_3.pth.*.part'))
    assert len(parts) == (point == 'before_rename')
    if point != 'before_rename':
        return
    # The killed save's partial file goes when the next run starts.
    resumed = run('tools/train.py', *args[:3], '--resume', *args[3:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 2, iter: 4' in resumed.stdout + resumed.stderr
    assert not glob.glob(osp.join(work_dir, '*.part'))
    assert complete_epochs(work_dir) == [3, 4]
    assert pointer(work_dir) == osp.join(work_dir, 'epoch_4.pth')


def test_stale_parts_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen(['true'])
    dead.wait()
    names = [
        f'.epoch_2.pth.{dead.pid}.part',  # removed
        f'.iter_8.pth.{os.getpid()}.part',  # its writer is alive
        'notes.part', '.epoch_2.pth.part', 'epoch_1.pth'  # not ours
    ]
    for name in names:
        (tmp_path / name).write_bytes(b'x')
    remove_stale_parts(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])


def test_work_dir_lock(tmp_path):
    fresh = str(tmp_path / 'fresh')
    with work_dir_lock(fresh):
        with pytest.raises(WorkDirBusyError,
                           match=f'in use by another run \\(pid '
                           f'{os.getpid()} on {socket.gethostname()}\\)'):
            with work_dir_lock(fresh):
                pass
        assert os.listdir(fresh) == ['.lock']
    # A failed run leaves neither the work dir nor the lock it created.
    with pytest.raises(KeyError):
        with work_dir_lock(str(tmp_path / 'failed')):
            raise KeyError
    assert os.listdir(tmp_path) == ['fresh']
    os.remove(osp.join(fresh, '.lock'))
    (tmp_path / 'fresh' / 'epoch_1.pth').write_bytes(b'x')
    with pytest.raises(KeyError):
        with work_dir_lock(fresh):
            raise KeyError
    assert os.listdir(fresh) == ['epoch_1.pth']


def listing(work_dir: str) -> dict:
    return {
        path: (os.stat(path).st_size, os.stat(path).st_mtime_ns)
        for path in glob.glob(osp.join(work_dir, '**'), recursive=True)
    }


@needs_data
@pytest.mark.slow
def test_second_run_on_a_work_dir_is_refused(tmp_path):
    work_dir = str(tmp_path)
    args = [
        'tools/train.py', CONFIG, '--work-dir', work_dir, '--no-validate',
        '--cfg-options', *TINY
    ]
    first = subprocess.Popen([
        sys.executable, *args, 'train_cfg.max_epochs=1000'
    ],
                             cwd=ROOT,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    holder = f'pid {first.pid} on {socket.gethostname()}'
    lock = osp.join(work_dir, '.lock')
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (
                osp.isfile(lock) and open(lock).read() == holder):
            time.sleep(0.05)
        assert first.poll() is None and open(lock).read() == holder
        # Stopped, the first run changes nothing while the second tries.
        first.send_signal(signal.SIGSTOP)
        before = listing(work_dir)
        second = run(*args, 'train_cfg.max_epochs=1')
        assert second.returncode == 1
        assert error_line(second) == (
            f"error: the work dir '{work_dir}' is in use by another run "
            f'({holder}): wait for it to end, stop it, or pass another '
            '--work-dir.')
        assert listing(work_dir) == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock went with it.
    third = run(*args, 'train_cfg.max_epochs=1')
    assert third.returncode == 0, third.stderr[-3000:]
    assert complete_epochs(work_dir)[-1] == 1


@pytest.mark.slow
def test_existing_outputs_are_kept_without_force(tmp_path):
    out = str(tmp_path / 'out.pkl')
    with open(out, 'wb') as f:
        f.write(b'keep me')
    commands = [
        ['tools/test.py', CONFIG, 'missing.pth', '--out', out],
        ['tools/model_converters/convmixer_to_mm.py', 'missing.pth', out],
        [
            'tools/deployment/pytorch2onnx.py', CONFIG, 'missing.pth',
            str(tmp_path / 'out.onnx')
        ],
    ]
    shutil.copy(out, tmp_path / 'out.onnx')
    for command in commands:
        result = run(*command)
        assert result.returncode == 1
        assert error_line(result) == (
            f"error: '{command[-1]}' already exists: pass --force to "
            'overwrite it.')
    assert {p.read_bytes() for p in tmp_path.iterdir()} == {b'keep me'}
    # With --force, test.py goes on (to the missing checkpoint).
    result = run(*commands[0], '--force')
    assert 'does not exist' in error_line(result)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint of one epoch of real training, with 16 KB tensors."""
    if not osp.isdir('/usr/share/datasets/fashion-mnist'):
        pytest.skip('needs dataset-fashion-mnist (bash tools/install.sh)')
    work_dir = tmp_path_factory.mktemp('train')
    assert train([
        CONFIG, '--work-dir',
        str(work_dir), '--no-validate', '--cfg-options', *TINY,
        'model.backbone.arch.embed_dims=64', 'model.head.in_channels=64',
        'train_cfg.max_epochs=1'
    ]) == 0
    return str(work_dir / 'epoch_1.pth')


@pytest.mark.slow
def test_bit_rot_in_optimizer_state_is_detected(checkpoint, tmp_path,
                                                capsys):
    saved = load_checkpoint_file(checkpoint)
    moments = [
        state['exp_avg'] for state in saved['optimizer']['state'].values()
    ]
    target = max(moments, key=torch.Tensor.nelement).numpy().tobytes()
    assert len(target) >= 8192
    with open(checkpoint, 'rb') as f:
        data = bytearray(f.read())
    start = data.find(target)
    assert start > 0 and data.find(target, start + 1) == -1
    start += (len(target) - 4096) // 2
    data[start:start + 4096] = os.urandom(4096)
    rotten = str(tmp_path / 'rotten.pth')
    with open(rotten, 'wb') as f:
        f.write(data)
    message = (f'checkpoint {rotten!r} is corrupt: its tensors do not '
               'match the sha256 saved with them')
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint_file(rotten)
    assert run_test([CONFIG, rotten, '--work-dir', str(tmp_path / 'w')]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f'error: {message}')
    assert not osp.exists(tmp_path / 'w')
    assert re.fullmatch(r'[0-9a-f]{64}', saved['meta']['tensors_sha256'])


@pytest.mark.slow
def test_checkpoints_without_checksum_still_load(checkpoint, tmp_path):
    saved = load_checkpoint_file(checkpoint)
    foreign = str(tmp_path / 'foreign.pth')
    torch.save({'state_dict': saved['state_dict']}, foreign)
    assert load_checkpoint_file(foreign).keys() == {'state_dict'}
    assert saved['meta'].pop('tensors_sha256')
    with weights_only_pickling():
        torch.save(saved, foreign)
    assert load_checkpoint_file(foreign)['meta']['epoch'] == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, which a full disk is made of."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    mounted = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs',
         str(disk)],
        capture_output=True,
        text=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs: {mounted.stderr.strip()}')
    yield str(disk)
    subprocess.run(['umount', str(disk)], check=True)


@needs_data
@pytest.mark.slow
def test_full_disk_while_saving(small_disk):
    work_dir = osp.join(small_disk, 'work')
    args = [
        'tools/train.py', CONFIG, '--work-dir', work_dir, '--no-validate',
        '--cfg-options', *TINY
    ]
    first = run(*args, 'train_cfg.max_epochs=1')
    assert first.returncode == 0, first.stderr[-3000:]
    saved = osp.join(work_dir, 'epoch_1.pth')
    with open(saved, 'rb') as f:
        good = f.read()
    # Leave room for the logs but not for a second checkpoint.
    stat = os.statvfs(small_disk)
    with open(osp.join(small_disk, 'filler'), 'wb') as f:
        f.write(b'\0' * (stat.f_bavail * stat.f_frsize - len(good) // 2))
    full = run(*args, 'train_cfg.max_epochs=2', '--resume')
    assert full.returncode == 1
    assert error_line(full) == (
        f"error: no space left to save epoch_2.pth in the work dir "
        f"'{work_dir}': free space (the previous checkpoints are kept) and "
        'continue with --resume.')
    with open(saved, 'rb') as f:
        assert f.read() == good
    assert pointer(work_dir) == saved
    assert not glob.glob(osp.join(work_dir, '*.part'))


def logged(work_dir: str) -> dict:
    """Every train step's logged values but the times, by step."""
    steps = {}
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data',
                                   'scalars.json')):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record:
                    steps[record['step']] = {
                        k: v
                        for k, v in record.items()
                        if k not in ('time', 'data_time', 'eta')
                    }
    return steps


@needs_data
@pytest.mark.slow
def test_resume_after_kill_is_exact(tmp_path):
    """Three epochs with validation, random crops and flips, and a random
    seed; killed after the first epoch's checkpoint and resumed."""
    def args(work_dir, *extra):
        return [
            'tools/train.py', CONFIG, '--work-dir',
            str(work_dir), *extra, '--cfg-options', *TINY,
            'val_dataloader.dataset.indices=64', 'train_cfg.max_epochs=3'
        ]

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([
        sys.executable, *args(killed), 'randomness.seed=None'
    ],
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not osp.exists(killed / 'last_checkpoint') and proc.poll(
        ) is None:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert complete_epochs(str(killed))[-1] < 3, 'killed too late'
    first = load_checkpoint_file(str(killed / 'epoch_1.pth'))
    seed = first['meta']['seed']
    # The uninterrupted run with the seed the killed run drew.
    whole = tmp_path / 'whole'
    result = run(*args(whole), f'randomness.seed={seed}')
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(*args(killed, '--resume'), 'randomness.seed=None')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resumed epoch: ' in result.stdout + result.stderr
    expected, got = logged(str(whole)), logged(str(killed))
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    assert got == expected
    expected = load_checkpoint_file(str(whole / 'epoch_3.pth'))
    got = load_checkpoint_file(str(killed / 'epoch_3.pth'))
    for key in ('state_dict', 'optimizer'):
        assert got[key].keys() == expected[key].keys()
    for name, tensor in expected['state_dict'].items():
        assert torch.equal(got['state_dict'][name], tensor), name
    for index, state in expected['optimizer']['state'].items():
        for name, tensor in state.items():
            assert torch.equal(got['optimizer']['state'][index][name],
                               tensor), (index, name)
