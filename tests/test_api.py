# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Our names in mmpretrain's ModelHub, load_model / classify (ours
and mmpretrain's), the official-URL loader, and their errors.

Budget: about 30 s on a quiet 2-core machine.
"""
import glob
import gzip
import json
import os.path as osp
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from mmcv.transforms import Compose
from mmengine.config import Config
from timm.models.convmixer import ConvMixer as TimmConvMixer

import mmpretrain
from convmixer_mm.apis import (OFFICIAL_URL_PREFIXES, WeightsNotFoundError,
                               classify, find_model_index, load_model,
                               load_image)
from convmixer_mm.apis.converter import CheckpointError, convert_checkpoint
from convmixer_mm.engine.checkpoint import model_shapes
from convmixer_mm.models import ConvMixerMM
from mmpretrain.apis import ImageClassificationInferencer, ModelHub
from mmpretrain.registry import TRANSFORMS
from conftest import randomize
from official_convmixer import official_convmixer

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CAT = osp.join(REPO, 'demo', 'chelsea.jpg')
FASHION_CONFIG = osp.join(REPO, 'configs', 'convmixer',
                          'convmixer-128-4-p4_1xb128_fashion-mnist.py')
NAME = 'convmixer-mm_1024-20_official-in1k'
OURS = {
    'convmixer-mm_768-32_official-in1k': 'convmixer-768-32_3rdparty_in1k',
    NAME: 'convmixer-1024-20_3rdparty_in1k',
    'convmixer-mm_1536-20_official-in1k': 'convmixer-1536-20_3rdparty_in1k',
}


def official_1024_20():
    """The official ConvMixer-1024/20 (kernel 9, patch 14), random."""
    return randomize(official_convmixer(1024, 20, 9, 14), 0)


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    """The reference model, its release-style file and our conversion."""
    folder = tmp_path_factory.mktemp('official')
    model = official_1024_20()
    release = str(folder / 'convmixer_1024_20_ks9_p14.pth.tar')
    torch.save({'state_dict': model.state_dict()}, release)
    converted = str(folder / 'converted.pth')
    convert_checkpoint(release, converted)
    return model, release, converted


def logits(model, x):
    with torch.no_grad():
        return model(x, mode='tensor') if hasattr(model, 'backbone') \
            else model(x)


def test_names_in_model_hub():
    found = mmpretrain.list_models('*convmixer*')
    assert set(OURS) | set(OURS.values()) <= set(found)
    # Ours do not shadow mmpretrain's own names.
    for name in OURS:
        assert not name.startswith(
            ('convmixer-768-32_', 'convmixer-1024-20_', 'convmixer-1536-20_'))
    assert set(ImageClassificationInferencer.list_models('convmixer-mm')) \
        == set(OURS)


def test_metafile():
    """Configs resolve, weights are the official release, parameters match
    the shapes and mmpretrain's independent count (FLOPs are checked in
    test_analysis_tools.py)."""
    _, root = find_model_index()
    with open(osp.join(REPO, 'configs', 'convmixer', 'metafile.yml')) as f:
        models = {m['Name']: m for m in yaml.safe_load(f)['Models']}
    assert set(models) == set(OURS)
    for name, theirs in OURS.items():
        entry = ModelHub.get(name)
        assert osp.isfile(entry.config.filename)
        assert entry.config.filename.startswith(root)
        assert entry.weights.startswith(OFFICIAL_URL_PREFIXES)
        arch = dict(
            ConvMixerMM.arch_settings[entry.config.model.backbone.arch],
            in_channels=3,
            num_classes=entry.config.model.head.num_classes)
        count = sum(
            int(np.prod(shape))
            for key, shape in model_shapes(arch).items()
            if key.endswith(('.weight', '.bias')))
        assert models[name]['Metadata']['Parameters'] == count
        assert ModelHub.get(theirs).metadata.parameters == count


@pytest.mark.slow
def test_mmpretrain_get_model_and_inference(official):
    """mmpretrain's own API loads our names with a local file."""
    model, _, converted = official
    x = torch.randn(1, 3, 56, 56)
    net = mmpretrain.get_model(NAME, pretrained=converted)
    assert (logits(net, x) - logits(model, x)).abs().max() <= 1e-4
    assert net._dataset_meta['classes'][281] == 'tabby, tabby cat'
    result = mmpretrain.inference_model(NAME, CAT, pretrained=converted)
    assert result['pred_class'] == net._dataset_meta['classes'][
        result['pred_label']]
    ours = classify(NAME, CAT, pretrained=converted, topk=3)
    np.testing.assert_allclose(
        ours['pred_scores'], result['pred_scores'], atol=1e-6)
    scores = ours['pred_scores']
    assert [label for label, _, _ in ours['topk']] == \
        list(np.argsort(-scores)[:3])
    assert ours['topk'][0][1] == result['pred_class']
    inferencer = ImageClassificationInferencer(
        ModelHub.get(NAME).config.filename, pretrained=converted)
    np.testing.assert_allclose(
        inferencer(CAT)[0]['pred_scores'], scores, atol=1e-6)


@pytest.mark.slow
def test_official_url_is_converted_on_load(official, tmp_path, monkeypatch):
    """``pretrained=True`` fetches the official release (here from
    torch.hub's cache, as offline users place it) and converts it."""
    model, release, _ = official
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setenv('CONVMIXER_MM_OFFLINE', '1')
    with pytest.raises(WeightsNotFoundError) as info:
        load_model(NAME, pretrained=True)
    message = str(info.value)
    assert ModelHub.get(NAME).weights in message
    assert 'tools/model_converters/convmixer_to_mm.py' in message
    assert str(tmp_path / 'hub' / 'checkpoints') in message
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    (cache / osp.basename(release)).symlink_to(release)
    x = torch.randn(1, 3, 28, 28)
    for net in (mmpretrain.get_model(NAME, pretrained=True),
                load_model(NAME, pretrained=True)):
        assert (logits(net, x) - logits(model, x)).abs().max() <= 1e-4
        assert len(net._dataset_meta['classes']) == 1000


@pytest.mark.slow
def test_any_layout_loads_directly(official):
    """Our load_model converts an unconverted release file in memory."""
    model, release, _ = official
    x = torch.randn(1, 3, 28, 28)
    net = load_model(NAME, pretrained=release)
    assert (logits(net, x) - logits(model, x)).abs().max() <= 1e-4


def test_missing_weight_file(tmp_path):
    missing = str(tmp_path / 'missing.pth')
    with pytest.raises(WeightsNotFoundError) as info:
        load_model(NAME, pretrained=missing)
    message = str(info.value)
    assert missing in message and 'no such file' in message
    assert ModelHub.get(NAME).weights in message
    with pytest.raises(
            WeightsNotFoundError,
            match='has no predefined weights: pass '
            'pretrained=PATH'):
        load_model(FASHION_CONFIG, pretrained=True)


def _fashion(tmp_path, act='gelu', in_chans=1, dims=128, seed=0):
    """A timm ConvMixer shaped like our Fashion-MNIST config, converted."""
    torch.manual_seed(seed)
    reference = TimmConvMixer(
        dims,
        4,
        kernel_size=5,
        patch_size=4,
        in_chans=in_chans,
        num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    converted = str(tmp_path / f'converted-{act}-{dims}.pth')
    convert_checkpoint(str(tmp_path / 'timm.pth'), converted, act=act)
    return reference, converted


def test_shape_mismatch_lists_keys(tmp_path):
    _, converted = _fashion(tmp_path, dims=64)
    with pytest.raises(CheckpointError) as info:
        load_model(FASHION_CONFIG, pretrained=converted)
    message = str(info.value)
    # Every conv, BN and fc tensor but the BN counters and the fc bias.
    assert '(55 mismatched keys)' in message and '... and 45 more' in message
    assert 'backbone.stem.0.weight: checkpoint (64, 1, 4, 4) vs model ' \
        '(128, 1, 4, 4)' in message


def test_activation_mismatch_is_refused(tmp_path):
    _, converted = _fashion(tmp_path, act='relu')
    with pytest.raises(
            CheckpointError,
            match='trained with ReLU, but the config builds GELU'):
        load_model(FASHION_CONFIG, pretrained=converted)
    net = load_model(
        FASHION_CONFIG,
        pretrained=converted,
        backbone=dict(act_cfg=dict(type='ReLU')))
    assert isinstance(net.backbone.stem[1], nn.ReLU)


def test_grayscale_inference_matches_reference(tmp_path):
    """A real Fashion-MNIST test image, as a PNG, through our config's
    pipeline equals the timm model on the normalized pixels."""
    reference, converted = _fashion(tmp_path)
    path = '/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz'
    with gzip.open(path) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16)[:784]
    image = pixels.reshape(28, 28)
    png = str(tmp_path / 'ankle-boot.png')
    cv2.imwrite(png, image)
    result = classify(FASHION_CONFIG, png, pretrained=converted)
    with torch.no_grad():
        x = (torch.from_numpy(image.astype(np.float32)) - 72.94) / 90.02
        expected = reference(x[None, None]).softmax(1)[0].numpy()
    np.testing.assert_allclose(result['pred_scores'], expected, atol=1e-5)
    # Fashion-MNIST's class names come from the config's test dataset.
    assert result['topk'][0][1] in mmpretrain.datasets.FashionMNIST.METAINFO[
        'classes']


def test_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.jpg does not exist'):
        load_image(str(tmp_path / 'nope.jpg'))
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    with pytest.raises(ValueError, match='notes.jpg is not an image'):
        load_image(str(text))
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    with pytest.raises(ValueError, match='empty.png is not an image'):
        load_image(str(empty))
    assert load_image(CAT).shape == (300, 451, 3)
    assert load_image(CAT, channels=1).shape == (300, 451)


def _scores(reference, image):
    """The timm reference's softmax on a 28x28 gray uint8 image."""
    with torch.no_grad():
        x = (torch.from_numpy(image.astype(np.float32)) - 72.94) / 90.02
        return reference(x[None, None]).softmax(1)[0].numpy()


def test_photo_through_the_fashion_mnist_config(tmp_path):
    """A 451x300 colour photo reaches the 28x28 gray model as its gray
    version resized to 28x28, through ours and mmpretrain's inferencer."""
    reference, converted = _fashion(tmp_path)
    gray = cv2.cvtColor(cv2.imread(CAT), cv2.COLOR_BGR2GRAY)
    expected = _scores(reference,
                       cv2.resize(gray, (28, 28),
                                  interpolation=cv2.INTER_LINEAR))
    net = load_model(FASHION_CONFIG, pretrained=converted)
    np.testing.assert_allclose(
        classify(net, CAT)['pred_scores'], expected, atol=1e-5)
    theirs = ImageClassificationInferencer(net, pretrained=False)
    np.testing.assert_allclose(
        theirs([CAT])[0]['pred_scores'], expected, atol=1e-5)


def test_alpha_is_composited_on_white(tmp_path):
    reference, converted = _fashion(tmp_path)
    net = load_model(FASHION_CONFIG, pretrained=converted)
    # Red under full transparency, black under half: white and mid gray.
    bgra = np.zeros((40, 60, 4), np.uint8)
    bgra[..., 2] = 255
    bgra[:, 30:, 2] = 0
    bgra[:, 30:, 3] = 128
    png = str(tmp_path / 'transparent.png')
    cv2.imwrite(png, bgra)
    image = load_image(png)
    assert image.shape == (40, 60, 3)
    assert (image[:, :30] == 255).all()
    assert (image[:, 30:] == 127).all()
    expected = np.full((28, 28), 255, np.uint8)
    expected[:, 14:] = 127
    np.testing.assert_allclose(
        classify(net, png)['pred_scores'],
        _scores(reference, expected),
        atol=1e-5)
    # An RGBA array straight into mmpretrain's inferencer: the same.
    theirs = ImageClassificationInferencer(net, pretrained=False)
    np.testing.assert_allclose(
        theirs([bgra])[0]['pred_scores'],
        classify(net, png)['pred_scores'],
        atol=1e-6)


SIZES = {'FashionMNISTIDX': 28, 'CIFAR10': 32, 'ImageNet': 224,
         'CustomDataset': 160}


@pytest.mark.parametrize(
    'config',
    sorted(glob.glob(osp.join(REPO, 'configs', '[!_]*', '[!_]*.py'))),
    ids=osp.basename)
def test_every_test_pipeline_brings_any_image_to_the_model(config):
    """Gray, colour and transparent arrays of any size, as mmpretrain's
    inferencer passes them, come out in the model's channels and size."""
    cfg = Config.fromfile(config)
    pipeline = Compose([
        TRANSFORMS.build(t) for t in cfg.test_dataloader.dataset.pipeline
        if t['type'] != 'LoadImageFromFile'
    ])
    channels = cfg.model.backbone.get('in_channels', 3)
    size = SIZES[cfg.test_dataloader.dataset.type]
    rng = np.random.default_rng(0)
    for shape in [(300, 451), (451, 300, 3), (97, 120, 4), (size, size)]:
        img = rng.integers(0, 256, shape, np.uint8)
        inputs = pipeline(dict(img=img))['inputs']
        assert tuple(inputs.shape) == (channels, size, size), shape
    if cfg.test_dataloader.dataset.type not in ('FashionMNISTIDX',
                                                'CIFAR10'):
        return
    # The data set's own images (all of one size) pass unchanged.
    img = rng.integers(0, 256, (size, size, channels), np.uint8)
    inputs = pipeline(dict(img=img.squeeze(-1) if channels == 1 else img))
    np.testing.assert_array_equal(inputs['inputs'].permute(1, 2, 0), img)


@pytest.mark.slow
def test_large_images_are_decoded_with_bounded_memory(tmp_path):
    """An 8000x8000 JPEG decodes at 1/4 scale: the peak memory of the
    classifying process grows by far less than one full decode (192 MB)."""
    big = str(tmp_path / 'big.jpg')
    cv2.imwrite(big, cv2.resize(cv2.imread(CAT), (8000, 8000)))
    script = f'''
import json, resource
from convmixer_mm.apis import classify, load_image, load_model
net = load_model({FASHION_CONFIG!r}, backbone=dict(arch=dict(
    embed_dims=16, depth=2, patch_size=4, kernel_size=5)),
    head=dict(in_channels=16))
classify(net, {CAT!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
top = classify(net, {big!r})['topk'][0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(growth_mb=(after - before) / 1024,
                      shape=load_image({big!r}).shape)))
'''
    result = subprocess.run([sys.executable, '-c', script],
                            capture_output=True,
                            text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured['shape'] == [2000, 2000, 3]
    assert measured['growth_mb'] < 64, measured
    # A PNG cannot be decoded downscaled: past MAX_PIXELS it is refused
    # from its header alone (this one has no pixel data at all).
    huge = tmp_path / 'huge.png'
    huge.write_bytes(_png_header(10000, 10000))
    with pytest.raises(ValueError, match=r'huge.png is 10000x10000 pixels: '
                       'images are decoded to at most 50 megapixels'):
        load_image(str(huge))


def _png_header(width, height):
    def chunk(kind, data):
        body = kind + data
        return struct.pack('>I', len(data)) + body + struct.pack(
            '>I', zlib.crc32(body))

    return (b'\x89PNG\r\n\x1a\n' + chunk(
        b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))
