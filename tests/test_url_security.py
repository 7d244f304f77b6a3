# Copyright (c) convmixer_mm contributors. All rights reserved.
"""No checkpoint URL runs code: a malicious pickle served over a real HTTP
server on 127.0.0.1 is refused by every entry point, and the refused
download does not stay in torch.hub's cache."""
import functools
import http.server
import os
import os.path as osp
import subprocess
import sys
import threading

import mmengine.runner.checkpoint as mm_checkpoint
import pytest
import torch
from mmengine.runner import CheckpointLoader

import mmpretrain
from convmixer_mm.apis import load_model
from convmixer_mm.engine import CheckpointError, load_checkpoint_file
from mmpretrain.registry import MODELS

REPO = osp.join(osp.dirname(__file__), '..')
CONFIG = osp.join(REPO, 'configs', 'convmixer',
                  'convmixer-128-4-p4_1xb128_fashion-mnist.py')
TINY = [
    'model.backbone.arch.embed_dims=16', 'model.backbone.arch.depth=2',
    'model.head.in_channels=16'
]


class Payload:
    """Unpickling this creates a directory: stands for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


class Served:
    """A loopback HTTP server over a folder, and the paths tests check."""

    def __init__(self, root) -> None:
        self.root = root
        self.marker = str(root / 'pwned')
        self.hub = root / 'hub'
        site = root / 'site'
        site.mkdir()
        torch.save({'state_dict': {}, 'meta': Payload(self.marker)},
                   site / 'evil.pth')
        handler = functools.partial(
            http.server.SimpleHTTPRequestHandler, directory=str(site))
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      handler)
        self.url = (f'http://127.0.0.1:{self.server.server_port}'
                    '/evil.pth')
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def assert_no_code_ran(self) -> None:
        assert not osp.exists(self.marker), 'the payload ran'
        cached = [f for _, _, fs in os.walk(self.hub) for f in fs]
        assert cached == [], f'refused download kept in the cache: {cached}'


@pytest.fixture
def served(tmp_path, monkeypatch):
    served = Served(tmp_path)
    monkeypatch.setenv('TORCH_HOME', str(served.hub))
    monkeypatch.setattr(torch.hub, '_hub_dir', str(served.hub))
    yield served
    served.server.shutdown()


def test_served_file_really_runs_code_when_unpickled(served, tmp_path):
    """The control: what the entry points refuse is a working exploit."""
    local = tmp_path / 'copy.pth'
    torch.hub.download_url_to_file(served.url, str(local), progress=False)
    torch.load(local, weights_only=False)
    assert osp.isdir(served.marker)


@pytest.mark.parametrize('entry', [
    'load_checkpoint_file', 'CheckpointLoader', 'mmengine_load_from_http',
    'mmengine_load_url', 'init_cfg_pretrained', 'mmpretrain_get_model',
    'convmixer_get_model'
])
def test_every_library_entry_refuses(entry, served):
    url = served.url
    with pytest.raises(CheckpointError, match='refused.*could run code'):
        if entry == 'load_checkpoint_file':
            load_checkpoint_file(url)
        elif entry == 'CheckpointLoader':
            CheckpointLoader.load_checkpoint(url)
        elif entry == 'mmengine_load_from_http':
            # What open-mmlab://, torchvision:// and mmcls:// end in.
            mm_checkpoint.load_from_http(url)
        elif entry == 'mmengine_load_url':
            mm_checkpoint.load_url(url)
        elif entry == 'init_cfg_pretrained':
            backbone = MODELS.build(
                dict(
                    type='ConvMixerMM',
                    arch=dict(
                        embed_dims=16, depth=2, patch_size=4, kernel_size=3),
                    init_cfg=dict(type='Pretrained', checkpoint=url)))
            backbone.init_weights()
        elif entry == 'mmpretrain_get_model':
            mmpretrain.get_model(CONFIG, pretrained=url)
        else:
            load_model(CONFIG, pretrained=url)
    served.assert_no_code_ran()


def test_local_path_with_a_scheme_like_name(tmp_path, monkeypatch):
    """A local file whose name contains ``://`` is read as a local file."""
    monkeypatch.chdir(tmp_path)
    os.mkdir('evil:')
    marker = str(tmp_path / 'pwned')
    torch.save({'meta': Payload(marker)}, 'evil:/ckpt.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}}, 'evil:/good.pth')
    assert load_checkpoint_file('evil://good.pth')['state_dict']['w'].sum() \
        == 2
    with pytest.raises(CheckpointError, match='refused'):
        load_checkpoint_file('evil://ckpt.pth')
    with pytest.raises(CheckpointError, match='refused'):
        load_model(CONFIG, pretrained='evil://ckpt.pth')
    assert not osp.exists(marker)


def _run(served, *args):
    env = dict(os.environ, TORCH_HOME=str(served.hub))
    return subprocess.run([sys.executable, *args],
                          capture_output=True,
                          text=True,
                          env=env,
                          cwd=str(served.root))


@pytest.mark.slow
@pytest.mark.parametrize('command', ['test', 'train_load_from', 'demo'])
def test_command_lines_refuse_with_one_error_line(command, served):
    work = str(served.root / 'work')
    if command == 'test':
        result = _run(served, osp.join(REPO, 'tools', 'test.py'), CONFIG,
                      served.url, '--work-dir', work, '--cfg-options', *TINY)
    elif command == 'train_load_from':
        result = _run(served, osp.join(REPO, 'tools', 'train.py'), CONFIG,
                      '--work-dir', work, '--cfg-options', *TINY,
                      f'load_from={served.url}')
    else:
        result = _run(served, osp.join(REPO, 'demo', 'image_demo.py'),
                      osp.join(REPO, 'demo', 'chelsea.jpg'), CONFIG,
                      '--pretrained', served.url)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error:') and 'refused' in last, last
    assert served.url in last
    served.assert_no_code_ran()
    assert not osp.exists(work)
