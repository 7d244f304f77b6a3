# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The checkpoint converter: parity with timm, mmpretrain and the official
model in every variant, the reverse layouts, and bad input.

Budget: about 60 s on a quiet 2-core machine (the three ImageNet variants
are built four times each, at 51M parameters for 1536/20).
"""
import gzip
import importlib.util
import os
import os.path as osp

import mmengine
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from timm.models.convmixer import ConvMixer as TimmConvMixer

import mmpretrain
from convmixer_mm.apis import load_model, load_pretrained
from convmixer_mm.apis.converter import (CheckpointError,
                                         convert_checkpoint,
                                         convert_state_dict,
                                         describe_conversion, from_mm_layout,
                                         to_mm_layout)
from convmixer_mm.cli.launch import test as run_tools_test
from conftest import randomize
from official_convmixer import official_convmixer

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs', 'convmixer')
FASHION_CONFIG = osp.join(CONFIGS,
                          'convmixer-128-4-p4_1xb128_fashion-mnist.py')
FASHION_ROOT = '/usr/share/datasets/fashion-mnist'
# arch: (dims, depth, kernel, patch, act, timm name, mmpretrain name)
VARIANTS = {
    '768/32': (768, 32, 7, 7, nn.ReLU, 'convmixer_768_32',
               'convmixer-768-32_3rdparty_in1k'),
    '1024/20': (1024, 20, 9, 14, nn.GELU, 'convmixer_1024_20_ks9_p14',
                'convmixer-1024-20_3rdparty_in1k'),
    '1536/20': (1536, 20, 9, 7, nn.GELU, 'convmixer_1536_20',
                'convmixer-1536-20_3rdparty_in1k'),
}
TOLERANCE = 1e-4


def config_of(arch):
    return osp.join(CONFIGS,
                    f'convmixer-{arch.replace("/", "-")}_10xb64_in1k.py')


def logits_of(model, x):
    with torch.no_grad():
        if isinstance(model, mmpretrain.models.ImageClassifier):
            return model(x, mode='tensor')
        return model(x)


def max_diff(reference, ours, x):
    return (logits_of(reference, x) - logits_of(ours, x)).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize('arch', list(VARIANTS))
def test_imagenet_parity(arch, tmp_path):
    """timm, mmpretrain and official references with random weights,
    converted, give the same logits in our model built from our config.

    The official checkpoint goes through files and the whole API; the
    others are converted in memory by the same library function, to keep
    the 51M-parameter variants quick (the tiny test covers their files).
    """
    dims, depth, kernel, patch, act, timm_name, mm_name = VARIANTS[arch]
    torch.manual_seed(0)
    # 64 px: 4x4 tokens at patch 14, enough for the 9x9 'same' kernels.
    x = torch.randn(1, 3, 64, 64)
    diffs = {}

    official = randomize(
        official_convmixer(dims, depth, kernel, patch, act=act), 3)
    # As timm's training script saved the release: wrapped, with extras.
    torch.save({
        'state_dict': official.state_dict(),
        'epoch': 150
    }, tmp_path / 'official.pth.tar')
    meta = convert_checkpoint(
        str(tmp_path / 'official.pth.tar'), str(tmp_path / 'official.pth'))
    ours = load_model(
        config_of(arch), pretrained=str(tmp_path / 'official.pth'))
    diffs['official'] = max_diff(official, ours, x)
    del official

    timm_ref = randomize(timm.create_model(timm_name), 1)
    state, _ = convert_state_dict(timm_ref.state_dict(), arch=arch)
    ours.load_state_dict(state, strict=True)
    diffs['timm'] = max_diff(timm_ref, ours, x)
    del timm_ref

    mm_ref = randomize(mmpretrain.get_model(mm_name, pretrained=False), 2)
    state, _ = convert_state_dict({'state_dict': mm_ref.state_dict()},
                                  config=config_of(arch))
    ours.load_state_dict(state, strict=True)
    diffs['mmpretrain'] = max_diff(mm_ref, ours, x)

    print(f'{arch} max abs logit diff: {diffs}')
    assert max(diffs.values()) <= TOLERANCE, diffs

    # The meta records the detected arch, the activation and the config.
    assert meta['arch'] == dict(
        embed_dims=dims,
        depth=depth,
        kernel_size=kernel,
        patch_size=patch,
        in_channels=3,
        num_classes=1000)
    assert meta['act_cfg'] == dict(type=act.__name__)
    assert meta['config'] == osp.relpath(config_of(arch), REPO)
    assert meta['source_layout'] == 'official'
    assert meta['dataset_meta']['classes'][281] == 'tabby, tabby cat'
    assert len(meta['dataset_meta']['classes']) == 1000


def test_activation_of_the_release():
    """768/32 needs ReLU; the config must say so, printed and in meta."""
    state = official_convmixer(768, 32, 7, 7, act=nn.ReLU).state_dict()
    _, meta = convert_state_dict(state)
    assert meta['act_cfg'] == dict(type='ReLU')
    text = describe_conversion(meta)
    assert "act_cfg=dict(type='ReLU')" in text
    assert 'configs/convmixer/convmixer-768-32_10xb64_in1k.py' in text
    # A GELU 768/32 (trained by someone else) is not one of our configs.
    _, meta = convert_state_dict(state, act='gelu')
    assert meta['act_cfg'] == dict(type='GELU') and meta['config'] is None
    with pytest.raises(
            CheckpointError,
            match='config uses ReLU but these '
            'weights need GELU'):
        convert_state_dict(state, act='gelu', config=config_of('768/32'))


@pytest.mark.parametrize('kernel', [3, 4])
def test_tiny_parity_all_layouts(kernel, tmp_path):
    """A tiny model, odd and even kernels ('same' pads right for even),
    through every source layout, the wrappers and a ``module.`` prefix."""
    torch.manual_seed(kernel)
    x = torch.randn(2, 3, 32, 32)
    ours = load_model(
        config_of('1536/20'),
        backbone=dict(
            arch=dict(
                _delete_=True,
                embed_dims=16,
                depth=2,
                patch_size=4,
                kernel_size=kernel)),
        head=dict(num_classes=10, in_channels=16))
    timm_ref = randomize(
        TimmConvMixer(16, 2, kernel_size=kernel, patch_size=4, num_classes=10),
        4)
    official = randomize(official_convmixer(16, 2, kernel, 4, n_classes=10), 5)
    cases = {
        'timm_model': (timm_ref, {
            'model': timm_ref.state_dict()
        }),
        'timm_ema': (timm_ref, {
            'state_dict_ema': timm_ref.state_dict(),
            'version': 2
        }),
        'official_ddp': (official, {
            'state_dict': {
                f'module.{k}': v
                for k, v in official.state_dict().items()
            }
        }),
    }
    for name, (reference, checkpoint) in cases.items():
        torch.save(checkpoint, tmp_path / f'{name}.pth')
        convert_checkpoint(
            str(tmp_path / f'{name}.pth'),
            str(tmp_path / f'{name}_mm.pth'),
            arch=f'16/2/{kernel}/4')
        load_pretrained(ours, str(tmp_path / f'{name}_mm.pth'))
        diff = max_diff(reference, ours, x)
        assert diff <= TOLERANCE, (name, diff)


def test_output_loads_weights_only(tmp_path):
    torch.save(
        official_convmixer(16, 2, 3, 4).state_dict(), tmp_path / 'src.pth')
    convert_checkpoint(str(tmp_path / 'src.pth'), str(tmp_path / 'dst.pth'))
    checkpoint = torch.load(tmp_path / 'dst.pth', weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert checkpoint['meta']['arch']['kernel_size'] == 3
    assert list(checkpoint['state_dict'])[0] == 'backbone.stem.0.weight'


@pytest.mark.parametrize('layout', ['timm', 'official'])
def test_round_trip_is_exact(layout, tmp_path):
    """mm -> timm/official -> mm and back reproduce every tensor, in
    order, bit for bit, and the reverse layout loads into its model."""
    reference = randomize(
        TimmConvMixer(16, 3, kernel_size=5, patch_size=2, num_classes=7)
        if layout == 'timm' else official_convmixer(16, 3, 5, 2, 7), 6)
    torch.save(reference.state_dict(), tmp_path / 'src.pth')
    convert_checkpoint(str(tmp_path / 'src.pth'), str(tmp_path / 'mm.pth'))
    convert_checkpoint(
        str(tmp_path / 'mm.pth'), str(tmp_path / 'back.pth'), to=layout)
    back = torch.load(tmp_path / 'back.pth', weights_only=True)
    src = reference.state_dict()
    assert list(back) == list(src)
    assert all(torch.equal(back[k], src[k]) for k in src)
    reference.load_state_dict(back, strict=True)
    mm_state = torch.load(tmp_path / 'mm.pth', weights_only=True)
    mm_state = mm_state['state_dict']
    state, found = to_mm_layout(from_mm_layout(mm_state, layout))
    assert found == layout
    assert all(torch.equal(state[k], mm_state[k]) for k in mm_state)


def test_safetensors_source(tmp_path):
    """timm's hub weights come as safetensors."""
    from safetensors.torch import save_file
    reference = randomize(TimmConvMixer(16, 2, 3, 4, num_classes=5), 8)
    save_file(reference.state_dict(), str(tmp_path / 'model.safetensors'))
    meta = convert_checkpoint(
        str(tmp_path / 'model.safetensors'), str(tmp_path / 'mm.pth'))
    assert meta['source_layout'] == 'timm'
    assert meta['arch']['num_classes'] == 5 and 'dataset_meta' not in meta
    (tmp_path / 'bad.safetensors').write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='not a safetensors checkpoint'):
        convert_checkpoint(
            str(tmp_path / 'bad.safetensors'), str(tmp_path / 'bad.pth'))


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'convmixer_to_mm',
        osp.join(REPO, 'tools', 'model_converters', 'convmixer_to_mm.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    torch.save(
        official_convmixer(16, 2, 3, 4, act=nn.ReLU).state_dict(),
        tmp_path / 'src.pth.tar')
    dst = str(tmp_path / 'dst.pth')
    assert cli.main([
        str(tmp_path / 'src.pth.tar'), dst, '--act', 'relu', '--arch',
        '16/2/3/4'
    ]) == 0
    out = capsys.readouterr().out
    assert 'official layout' in out and "dict(type='ReLU')" in out
    assert f'Wrote {dst}' in out
    before = os.stat(dst).st_mtime_ns
    # Refuses to clobber without --force, and says so.
    assert cli.main([str(tmp_path / 'src.pth.tar'), dst]) == 1
    assert 'pass --force' in capsys.readouterr().err
    assert os.stat(dst).st_mtime_ns == before
    assert cli.main(
        [str(tmp_path / 'src.pth.tar'), dst, '--force', '--to', 'timm']) == 0
    assert 'stem.0.weight' in torch.load(dst, weights_only=True)


def _file(tmp_path, name, payload):
    path = tmp_path / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    return str(path)


@pytest.mark.parametrize(
    'payload, match',
    [
        (b'not a checkpoint at all\n', 'is not a PyTorch checkpoint|corrupt'),
        (b'', 'is not a PyTorch checkpoint|corrupt'),
        # A torchvision-style ResNet.
        ({
            'conv1.weight': torch.zeros(64, 3, 7, 7),
            'layer1.0.conv1.weight': torch.zeros(64, 64, 3, 3),
            'fc.weight': torch.zeros(1000, 2048)
        }, r'not a ConvMixer checkpoint.*conv1\.weight'),
        # An mmpretrain ResNet.
        ({
            'state_dict': {
                'backbone.conv1.weight': torch.zeros(64, 3, 7, 7),
                'head.fc.weight': torch.zeros(1000, 2048)
            }
        }, 'not a ConvMixer checkpoint'),
        ({
            'state_dict': {
                'stem.0.weight': torch.zeros(1)
            },
            'epoch': 3
        }, 'not a ConvMixer checkpoint'),
        ([1, 2, 3], 'not a dict of weights|must be a dict'),
        ({
            'epoch': 3,
            'lr': 0.1
        }, 'holds no state dict of tensors'),
    ],
    ids=[
        'text', 'empty', 'resnet', 'mm-resnet', 'truncated', 'list',
        'no-tensors'
    ])
def test_bad_sources(tmp_path, payload, match):
    src = _file(tmp_path, 'src.pth', payload)
    dst = tmp_path / 'dst.pth'
    with pytest.raises(CheckpointError, match=match):
        convert_checkpoint(src, str(dst))
    assert not dst.exists() and os.listdir(tmp_path) == ['src.pth']


def test_missing_source(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        convert_checkpoint(
            str(tmp_path / 'nope.pth'), str(tmp_path / 'dst.pth'))


def test_inconsistent_checkpoint_lists_keys(tmp_path):
    state = official_convmixer(16, 2, 3, 4).state_dict()
    state['4.1.weight'] = torch.zeros(16, 8, 1, 1)
    del state['3.3.running_var']
    src = _file(tmp_path, 'src.pth', state)
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(src, str(tmp_path / 'dst.pth'))
    message = str(info.value)
    assert 'backbone.stages.1.1.weight: checkpoint (16, 8, 1, 1) vs model ' \
        '(16, 16, 1, 1)' in message
    assert 'backbone.stages.0.3.running_var: missing' in message


def test_arch_and_config_mismatch(tmp_path):
    src = _file(tmp_path, 'src.pth',
                official_convmixer(16, 2, 3, 4, n_classes=10).state_dict())
    with pytest.raises(
            CheckpointError,
            match='embed_dims: checkpoint 16 vs --arch 1536/20 '
            '1536; depth: checkpoint 2 vs --arch 1536/20 20'):
        convert_checkpoint(src, str(tmp_path / 'dst.pth'), arch='1536/20')
    # The Fashion-MNIST shape but 7 classes: exactly the head mismatches.
    seven = _file(
        tmp_path, 'seven.pth',
        TimmConvMixer(128, 4, 5, 4, in_chans=1, num_classes=7).state_dict())
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(
            seven, str(tmp_path / 'dst.pth'), config=FASHION_CONFIG)
    assert str(info.value).splitlines()[:3] == [
        'The checkpoint does not fit the config (2 mismatched keys):',
        '  head.fc.weight: checkpoint (7, 128) vs model (10, 128)',
        '  head.fc.bias: checkpoint (7,) vs model (10,)',
    ]
    with pytest.raises(ValueError, match='Unknown ConvMixer arch'):
        convert_checkpoint(src, str(tmp_path / 'dst.pth'), arch='big')
    assert sorted(os.listdir(tmp_path)) == ['seven.pth', 'src.pth']


def test_existing_destination_is_kept(tmp_path):
    src = _file(tmp_path, 'src.pth',
                official_convmixer(16, 2, 3, 4).state_dict())
    dst = tmp_path / 'dst.pth'
    dst.write_bytes(b'precious')
    with pytest.raises(FileExistsError, match='pass --force'):
        convert_checkpoint(src, str(dst))
    assert dst.read_bytes() == b'precious'
    # A failure with --force leaves the old file too.
    with pytest.raises(CheckpointError):
        convert_checkpoint(src, str(dst), arch='768/32', force=True)
    assert dst.read_bytes() == b'precious'
    convert_checkpoint(src, str(dst), force=True)
    assert 'state_dict' in torch.load(dst, weights_only=True)
    assert sorted(os.listdir(tmp_path)) == ['dst.pth', 'src.pth']


def _fashion_test_images(count):
    with gzip.open(osp.join(FASHION_ROOT, 't10k-images-idx3-ubyte.gz')) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)
    return torch.from_numpy(images[:count * 784].reshape(
        count, 1, 28, 28).astype(np.float32))


@pytest.mark.slow
def test_tools_test_evaluates_converted_checkpoint(tmp_path):
    """tools/test.py on a converted timm checkpoint predicts exactly what
    the timm model predicts (on 64 real Fashion-MNIST test images)."""
    reference = randomize(
        TimmConvMixer(
            128, 4, kernel_size=5, patch_size=4, in_chans=1, num_classes=10),
        9)
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    ckpt = str(tmp_path / 'mm.pth')
    convert_checkpoint(str(tmp_path / 'timm.pth'), ckpt, config=FASHION_CONFIG)
    preds = str(tmp_path / 'preds.pkl')
    status = run_tools_test([
        FASHION_CONFIG, ckpt, '--work-dir',
        str(tmp_path / 'work'), '--out', preds, '--cfg-options',
        'test_dataloader.dataset.indices=64'
    ])
    assert status == 0
    results = mmengine.load(preds)
    with torch.no_grad():
        expected = reference((_fashion_test_images(64) - 72.94) / 90.02)
    scores = torch.stack([r['pred_score'] for r in results])
    assert torch.allclose(scores, expected.softmax(1), atol=1e-5)
    assert [int(r['pred_label']) for r in results] == \
        expected.argmax(1).tolist()
