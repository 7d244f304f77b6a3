# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Smoke test of the benchmark tool on a tiny config, and its parts.

No timing assertions. About 10 s on 2 CPU cores.
"""
import json
import os.path as osp
import re

import pytest
import torch

from conftest import load_tool
from convmixer_mm.cli import run
from convmixer_mm.devtools.benchmark import (CandidateSpec, check,
                                             interleaved_times, main,
                                             parse_args, peak_memory)
from convmixer_mm.devtools.benchmark_report import update_readme
from convmixer_mm.utils import UserError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_CONFIG = """
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ConvMixerMM',
        arch=dict(embed_dims=16, depth=2, patch_size=4, kernel_size=5),
        in_channels=1),
    head=dict(type='ConvMixerClsHead', num_classes=10, in_channels=16))
"""


@pytest.mark.slow
def test_tool_smoke_run_json_and_readme(tmp_path, capsys):
    config = tmp_path / 'tiny.py'
    config.write_text(TINY_CONFIG)
    out = tmp_path / 'report.json'
    candidates = [
        'ours+cl+fuse', 'ours', 'ours+cp', 'ours+cl+bf16', 'mmpretrain',
        'timm+cl'
    ]
    tool = load_tool('tools/analysis_tools/benchmark.py')
    tool.main([
        str(config), '--img-size', '16', '--batch-size', '2', '--rounds',
        '2', '--warmup', '1', '--mode', 'both', '--threads', '2',
        '--profile', '--candidates', *candidates, '--out',
        str(out)
    ])
    table = capsys.readouterr().out
    assert 'ours+cl+fuse' in table and 'GEMM' in table
    # Progress: each candidate as it is measured.
    progress = table
    for name in candidates:
        assert f'inference: building and checking {name}\n' in progress
        assert re.search(rf'inference: {re.escape(name)}: [\d.]+ img/s',
                         progress)
    assert 'round 2/2' in progress

    report = json.loads(out.read_text())
    assert report['settings']['in_channels'] == 1
    # Multiply-adds of one 16x16 image, as apis.complexity counts them:
    # stem, 2 x (depthwise 5x5 + 1x1), 5 affine BNs (2 each), pool, fc.
    tokens = 4 * 4
    macs = (tokens * 16 * 16 + 2 * tokens * 16 * (25 + 16) +
            5 * 2 * 16 * tokens + 16 * tokens + 16 * 10)
    assert report['macs_per_image'] == macs
    infer = report['results']['inference']['candidates']
    assert list(infer) == candidates
    for name, row in infer.items():
        assert row['img_per_s'] > 0 and len(row['times_s']) == 2
        # Identical weights and inputs: every implementation agrees.
        tol = 3e-2 if row['dtype'] == 'bf16' else 1e-5
        assert row['max_abs_diff'] < tol, name
    # Fused models are inference-only and are not trained.
    train = report['results']['train']['candidates']
    assert list(train) == candidates[1:]
    assert set(report['results']['train']['gemm']) == {
        'gemm:torch.mm:fp32', 'gemm:onednn:fp32', 'gemm:torch.mm:bf16',
        'gemm:onednn:bf16'
    }

    prof = report['results']['inference']['profile']
    assert prof['candidate'] == 'ours+cl+fuse'
    assert 'mkldnn::_convolution_pointwise' in [op['op'] for op in prof['ops']]

    readme = tmp_path / 'README.md'
    readme.write_text('# x\n\n## Performance\n\nold text\n\n## Tests\n\nt\n')
    tool.main(['--readme', str(readme), str(out)])
    text = readme.read_text()
    assert 'Updated the Performance section' in capsys.readouterr().out
    assert 'old text' not in text and text.endswith('## Tests\n\nt\n')
    # Nothing changed: nothing written, and it says so.
    mtime = readme.stat().st_mtime_ns
    tool.main(['--readme', str(readme), str(out)])
    assert 'already up to date' in capsys.readouterr().out
    assert readme.stat().st_mtime_ns == mtime
    assert '| `ours+cl+fuse` |' in text and report['machine'] in text
    assert 'Fashion-MNIST config training step' in text


def test_peak_memory_sees_an_allocation():
    size = 64 * 2**20

    def allocate() -> None:
        torch.ones(size // 4)

    assert peak_memory(allocate, 'cpu') >= 0.9 * size
    assert peak_memory(lambda: None, 'cpu') < 0.25 * size


def test_interleaving_rotates_the_order():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in 'abc'}
    times = interleaved_times(fns, warmup=0, rounds=3, device='cpu')
    assert calls == list('abcbcacab')
    assert all(len(t) == 3 for t in times.values())


def test_candidate_specs():
    spec = CandidateSpec.parse('ours+bf16+fuse+cl')
    assert (spec.flags, spec.dtype) == ({'cl', 'fuse'}, 'bf16')
    assert spec.name == 'ours+cl+fuse+bf16'
    with pytest.raises(ValueError, match='Unknown implementation'):
        CandidateSpec.parse('torchvision+cl')
    with pytest.raises(ValueError, match=r'Unknown flags \[.fast.\]'):
        CandidateSpec.parse('ours+fast')
    with pytest.raises(ValueError, match='for "ours" only'):
        CandidateSpec.parse('timm+fuse')
    with pytest.raises(ValueError, match='more than one dtype'):
        CandidateSpec.parse('ours+bf16+fp16')


def test_bad_settings_and_configs(tmp_path, capsys):
    def settings(*argv):
        return parse_args(['16/2/5/4', *argv])

    with pytest.raises(SystemExit):
        settings('--dtype', 'int8')
    assert "--dtype: invalid choice: 'int8'" in capsys.readouterr().err
    with pytest.raises(ValueError, match='smaller than the patch'):
        check(settings('--img-size', '2'))
    with pytest.raises(ValueError, match='Duplicate'):
        check(settings('--candidates', 'ours', 'ours'))
    with pytest.raises(ValueError, match='inference-only'):
        check(settings('--candidates', 'ours+fuse', '--mode', 'train'))
    config = tmp_path / 'tiny.py'
    config.write_text(TINY_CONFIG.replace(', kernel_size=5', ''))
    with pytest.raises(ValueError, match='missing'):
        parse_args([str(config)])
    other = tmp_path / 'resnet.py'
    other.write_text("model = dict(backbone=dict(type='ResNet'))\n")
    with pytest.raises(UserError, match='ResNet backbone, not a ConvMixer'):
        parse_args([str(other)])
    # The tool's contract: bad input is one error line and status 1.
    assert run(main, [str(tmp_path / 'nope.py')]) == 1
    assert capsys.readouterr().err == (
        f'error: Config {tmp_path / "nope.py"} does not exist.\n')
    readme = tmp_path / 'README.md'
    readme.write_text('# no section\n')
    report = tmp_path / 'r.json'
    report.write_text('{}')
    with pytest.raises(ValueError, match='no "## Performance"'):
        update_readme(str(readme), [str(report)])
    assert readme.read_text() == '# no section\n'
