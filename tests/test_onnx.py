# Copyright (c) convmixer_mm contributors. All rights reserved.
"""ONNX export: onnxruntime agrees with PyTorch; bad input fails cleanly."""
import os
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

import onnxruntime as ort  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

from conftest import load_tool  # noqa: E402
from convmixer_mm.apis.onnx_export import (  # noqa: E402
    ExportError, build_classifier, export_onnx, opset_of)
from convmixer_mm.engine import CheckpointError, ConfigError  # noqa: E402

pytestmark = pytest.mark.slow


def tiny_classifier(kernel_size: int) -> dict:
    return dict(
        type='ImageClassifier',
        data_preprocessor=dict(
            type='ClsDataPreprocessor',
            num_classes=10,
            mean=[72.94],
            std=[90.02]),
        backbone=dict(
            type='ConvMixerMM',
            arch=dict(
                embed_dims=16,
                depth=2,
                patch_size=4,
                kernel_size=kernel_size),
            in_channels=1),
        head=dict(type='ConvMixerClsHead', num_classes=10, in_channels=16))


def build(kernel_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS.build(tiny_classifier(kernel_size))
    # Non-trivial BN statistics, so that eval-mode BN is really exported.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.)
    return model.eval()


def run_onnx(path: str, inputs: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {'input': inputs.numpy()})[0]


@pytest.mark.parametrize('kernel_size', [3, 4])
def test_dynamic_batch_export_matches_pytorch(tmp_path, kernel_size):
    # Kernel 4 keeps padding='same' (asymmetric), which users report to
    # break ONNX export; kernel 3 takes the symmetric-padding path.
    model = build(kernel_size)
    out = str(tmp_path / 'model.onnx')
    diffs = export_onnx(model, out, (28, 28), opset=18, dynamic_batch=True)
    assert sorted(diffs) == [1, 3]
    assert max(diffs.values()) < 1e-4
    # A batch size that neither the export nor its check used.
    inputs = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(inputs, mode='tensor').numpy()
    actual = run_onnx(out, inputs)
    assert actual.shape == (5, 10)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
    opset, metadata = opset_of(out)
    assert opset == 18
    assert metadata == {'mean': '[72.94]', 'std': '[90.02]'}
    assert os.listdir(tmp_path) == ['model.onnx']


def test_fixed_batch_export_with_an_old_opset(tmp_path):
    # Opsets below 18 go through the TorchScript exporter.
    model = build(4)
    out = str(tmp_path / 'model.onnx')
    diffs = export_onnx(model, out, (28, 28), opset=13)
    assert list(diffs) == [1] and diffs[1] < 1e-4
    assert opset_of(out)[0] == 13
    inputs = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        expected = model(inputs, mode='tensor').numpy()
    np.testing.assert_allclose(
        run_onnx(out, inputs), expected, atol=1e-4, rtol=0)
    with pytest.raises(Exception, match='(?i)dimension|shape'):
        run_onnx(out, torch.randn(2, 1, 28, 28))


@pytest.fixture
def config_and_checkpoint(tmp_path):
    config = tmp_path / 'tiny.py'
    config.write_text(
        "custom_imports = dict(imports=['convmixer_mm'], "
        'allow_failed_imports=False)\n'
        f'model = {tiny_classifier(4)!r}\n')
    checkpoint = tmp_path / 'tiny.pth'
    torch.save({'meta': {}, 'state_dict': build(4).state_dict()}, checkpoint)
    return str(config), str(checkpoint)


def test_tool_exports_a_checkpoint(tmp_path, config_and_checkpoint, capsys):
    config, checkpoint = config_and_checkpoint
    out = str(tmp_path / 'out' / 'tiny.onnx')
    os.makedirs(osp.dirname(out))
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    tool.main([
        config, checkpoint, out, '--shape', '28', '28', '--dynamic-batch'
    ])
    printed = capsys.readouterr().out
    assert 'opset 18' in printed
    assert 'batch 1: max abs diff' in printed
    assert 'batch 3: max abs diff' in printed
    # The graph carries the checkpoint's weights, not a fresh init.
    inputs = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = build(4)(inputs, mode='tensor').numpy()
    np.testing.assert_allclose(
        run_onnx(out, inputs), expected, atol=1e-4, rtol=0)


def test_bad_config_and_checkpoint(tmp_path, config_and_checkpoint):
    config, checkpoint = config_and_checkpoint
    with pytest.raises(ConfigError, match='missing.py.* does not exist'):
        build_classifier(str(tmp_path / 'missing.py'), checkpoint)
    with pytest.raises(CheckpointError, match='does not exist'):
        build_classifier(config, str(tmp_path / 'missing.pth'))
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': build(3).state_dict()}, other)
    with pytest.raises(CheckpointError, match='does not fit'):
        build_classifier(config, str(other))
    # The tool checks the cheap arguments before loading anything.
    tool = load_tool('tools/deployment/pytorch2onnx.py')
    with pytest.raises(ValueError, match='opset=9'):
        tool.main([config, 'missing.pth', str(tmp_path / 'a.onnx'),
                   '--opset', '9'])


def test_bad_output_and_opset(tmp_path):
    model = build(3)
    with pytest.raises(ValueError, match=r'opset=10 .* \[11, 23\]'):
        export_onnx(model, str(tmp_path / 'a.onnx'), (28, 28), opset=10)
    with pytest.raises(ValueError, match='opset=24'):
        export_onnx(model, str(tmp_path / 'a.onnx'), (28, 28), opset=24)
    with pytest.raises(FileNotFoundError, match='does not exist: create'):
        export_onnx(model, str(tmp_path / 'no' / 'a.onnx'), (28, 28))
    with pytest.raises(ValueError, match='must end with .onnx'):
        export_onnx(model, str(tmp_path / 'a.pth'), (28, 28))
    (tmp_path / 'dir.onnx').mkdir()
    with pytest.raises(IsADirectoryError, match='is a directory'):
        export_onnx(model, str(tmp_path / 'dir.onnx'), (28, 28))
    existing = tmp_path / 'old.onnx'
    existing.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match='pass --force'):
        export_onnx(model, str(existing), (28, 28))
    assert existing.read_bytes() == b'keep me'
    with pytest.raises(ValueError, match=r'input_shape=\(1, 28, 28, 1\)'):
        export_onnx(model, str(tmp_path / 'a.onnx'), (1, 28, 28, 1))
    assert sorted(os.listdir(tmp_path)) == ['dir.onnx', 'old.onnx']


def test_failed_check_leaves_nothing_behind(tmp_path):
    existing = tmp_path / 'model.onnx'
    existing.write_bytes(b'previous export')
    # No float32 graph matches PyTorch to 1e-12 through erf-GELU and BN.
    with pytest.raises(ExportError, match='differ from PyTorch'):
        export_onnx(
            build(4),
            str(existing), (28, 28),
            atol=1e-12,
            force=True)
    assert os.listdir(tmp_path) == ['model.onnx']
    assert existing.read_bytes() == b'previous export'
