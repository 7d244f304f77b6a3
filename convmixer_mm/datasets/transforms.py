# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Bring any image to the channels a model takes."""
import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from mmpretrain.registry import TRANSFORMS


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert a gray, gray+alpha, BGR or BGRA uint8 image to ``channels``.

    ``channels`` is 1 for ``(H, W)`` gray or 3 for ``(H, W, 3)`` BGR. Alpha
    is composited on white, so a transparent background reads as white.
    """
    if img.ndim == 3 and img.shape[2] in (2, 4):
        alpha = img[..., -1:].astype(np.float32) / 255
        img = np.rint(img[..., :-1] * alpha + 255 * (1 - alpha)).astype(
            np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if channels == 1 and img.ndim == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if channels == 3 and img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


@TRANSFORMS.register_module()
class ToChannels(BaseTransform):
    """Convert ``results['img']`` to ``channels`` (1 gray or 3 BGR, the
    default) with :func:`to_channels`: test pipelines start with it, so
    any image reaches the model with the channels it was trained on."""

    def __init__(self, channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f'channels must be 1 or 3, got {channels}.')
        self.channels = channels

    def transform(self, results: dict) -> dict:
        results['img'] = to_channels(results['img'], self.channels)
        results['img_shape'] = results['img'].shape[:2]
        return results
