# Copyright (c) convmixer_mm contributors. All rights reserved.
"""``load_model`` and ``classify``: mmpretrain's ``get_model`` and
``inference_model`` (which take our names too) with checks.

A missing weight file names the URL and the conversion command, any
checkpoint layout is converted on the fly, mismatched shapes are listed key
by key, and weights trained with another activation than the config's are
refused rather than silently giving wrong predictions.
"""
import os.path as osp
import warnings
from os import PathLike
from typing import Any, Union

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from PIL import Image

from mmpretrain.apis import ImageClassificationInferencer, ModelHub
from mmpretrain.apis import get_model as mm_get_model
from ..datasets.transforms import to_channels
from ..engine.checkpoint import (CheckpointError, is_remote,
                                 load_checkpoint_file, load_weights,
                                 raise_mismatches)
from .converter import convert_state_dict
from .hub import WeightsNotFoundError, missing_weights_message

ModelType = Union[str, PathLike, Config]


def load_model(model: ModelType,
               pretrained: Union[bool, str, PathLike] = False,
               device: Union[str, torch.device, None] = None,
               **kwargs) -> BaseModel:
    """Build a model by name (``mmpretrain.list_models('convmixer-mm*')``)
    or config, in eval mode, with checked weights.

    ``pretrained`` is ``True`` for the model's predefined weights, or a
    checkpoint path or URL of any ConvMixer layout; ``kwargs`` override the
    ``model`` config. ``model.dataset_meta`` holds the class names when the
    checkpoint records them.
    """
    if isinstance(pretrained, PathLike):
        pretrained = str(pretrained)
    if isinstance(pretrained, str) and not is_remote(pretrained) \
            and not osp.isfile(pretrained):
        url = ModelHub.get(model).weights if isinstance(
            model, str) and ModelHub.has(model.lower()) else None
        raise WeightsNotFoundError(
            missing_weights_message(
                pretrained, url, reason='not found: no such file'))
    net = mm_get_model(model, pretrained=False, **kwargs)
    if pretrained is True:
        metainfo = getattr(net, '_metainfo', None)
        pretrained = metainfo.weights if metainfo is not None else \
            net._config.get('load_from')
        if not pretrained:
            raise WeightsNotFoundError(
                f'{model} has no predefined weights: pass pretrained=PATH (a '
                'checkpoint file) instead of True.')
    if pretrained:
        load_pretrained(net, pretrained)
    if device is not None:
        net.to(device)
    return net.eval()


def load_pretrained(net: BaseModel, source: str) -> None:
    """Load a ConvMixer checkpoint (file or URL) of any layout into
    ``net``, built by :func:`load_model`, strictly."""
    checkpoint = load_checkpoint_file(source)
    state, meta = convert_state_dict(checkpoint)
    raise_mismatches(
        state, {k: tuple(v.shape) for k, v in net.state_dict().items()},
        f'{source} does not fit the model built from the config',
        'Use the config the weights were trained or converted for (the '
        'converter prints it).')
    old_meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    needed = meta['act_cfg']['type']
    used = net._config.model.backbone.get('act_cfg', dict(type='GELU'))['type']
    # Our own training checkpoints do not record the activation; converted
    # and third-party ones do (or imply the release's).
    recorded = meta['source_layout'] != 'mmpretrain' or \
        'act_cfg' in (old_meta or {})
    if recorded and used != needed:
        raise CheckpointError(
            f'{source} holds weights trained with {needed}, but the config '
            f'builds {used}: the predictions would be wrong. Use a config '
            f'with model.backbone.act_cfg=dict(type={needed!r}) (or pass '
            f"backbone=dict(act_cfg=dict(type={needed!r})) to load_model).")
    load_weights(net, state, name=source)
    if 'dataset_meta' in meta:
        net._dataset_meta = meta['dataset_meta']


# JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while
# their short side stays at least DECODE_MIN_SIDE, far above any config's
# input size, so a huge photo costs little memory and time.
DECODE_MIN_SIDE = 1024
# What would still decode to more pixels is refused (50 megapixels take
# 200 MB as BGRA).
MAX_PIXELS = 50_000_000


def load_image(img: Union[str, PathLike, np.ndarray],
               channels: int = 3) -> np.ndarray:
    """Read an image file or array as ``(H, W, 3)`` BGR or, for
    ``channels=1``, ``(H, W)`` gray uint8, with bounded memory.

    Large JPEGs are decoded downscaled (see ``DECODE_MIN_SIDE``), other
    images over ``MAX_PIXELS`` are refused, alpha is composited on white
    (:func:`to_channels`).
    """
    if isinstance(img, np.ndarray):
        return to_channels(img, channels)
    path = str(img)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Image {path} does not exist.')
    not_an_image = ValueError(
        f'{path} is not an image that can be decoded: pass a JPEG, PNG or '
        'BMP file.')
    try:
        with warnings.catch_warnings(), Image.open(path) as header:
            # Only the header is read; the size check below is ours.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            (width, height), kind = header.size, header.format
            alpha = 'A' in header.getbands() or \
                'transparency' in header.info
    except Image.DecompressionBombError:
        width, height, kind, alpha = 1 << 16, 1 << 16, None, False
    except (OSError, ValueError):
        raise not_an_image from None
    scale = 1
    while kind == 'JPEG' and scale < 8 and \
            min(width, height) >= 2 * scale * DECODE_MIN_SIDE:
        scale *= 2
    if width * height > MAX_PIXELS * scale**2:
        raise ValueError(
            f'{path} is {width}x{height} pixels: images are decoded to at '
            f'most {MAX_PIXELS // 10**6} megapixels (JPEGs at down to 1/8 '
            'scale) to bound memory. Downscale it first.')
    flag = cv2.IMREAD_UNCHANGED if alpha else getattr(
        cv2, f'IMREAD_REDUCED_COLOR_{scale}', cv2.IMREAD_COLOR)
    with open(path, 'rb') as f:
        data = np.frombuffer(f.read(), np.uint8)
    try:
        image = cv2.imdecode(data, flag)
    except cv2.error:
        image = None
    if image is None:
        raise not_an_image
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    return to_channels(image, channels)


def classify(model: Union[BaseModel, ModelType],
             img: Union[str, PathLike, np.ndarray],
             pretrained: Union[bool, str, PathLike] = False,
             device: Union[str, torch.device, None] = None,
             topk: int = 5,
             **kwargs) -> dict:
    """Classify one image with a built model or what :func:`load_model`
    takes (``pretrained``, ``device`` and ``kwargs`` go to it).

    Returns:
        dict: mmpretrain's ``pred_scores``, ``pred_label``, ``pred_score``
        (and ``pred_class`` when the classes are known), plus ``topk``, a
        list of ``(label, class, score)``.
    """
    if topk < 1:
        raise ValueError(f'topk must be at least 1, got {topk}.')
    if not isinstance(img, np.ndarray) and not osp.isfile(img):
        # Before building the model, which takes seconds for big ones.
        raise FileNotFoundError(f'Image {img} does not exist.')
    if not isinstance(model, BaseModel):
        model = load_model(model, pretrained, device, **kwargs)
    image = load_image(img, model.backbone.stem[0].in_channels)
    inferencer = ImageClassificationInferencer(model, pretrained=False)
    # Not the inferencer's __call__, which draws a progress bar on stdout.
    batch = next(inferencer.preprocess([image]))
    result: Any = inferencer.postprocess(inferencer.forward(batch), [])[0]
    scores, classes = result['pred_scores'], inferencer.classes
    result['topk'] = [
        (int(i), classes[i] if classes else str(i), float(scores[i]))
        for i in np.argsort(-scores, kind='stable')[:topk]
    ]
    return result
