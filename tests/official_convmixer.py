# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Reference models for the converter and API tests."""
import torch.nn as nn


class Residual(nn.Module):
    """The official ``Residual`` (locuslab/convmixer, convmixer.py)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def official_convmixer(dim,
                       depth,
                       kernel_size=9,
                       patch_size=7,
                       n_classes=1000,
                       act=nn.GELU):
    """The official model, an ``nn.Sequential`` (with the activation as an
    argument, as the released 768/32 weights need ReLU)."""
    return nn.Sequential(
        nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size), act(),
        nn.BatchNorm2d(dim), *[
            nn.Sequential(
                Residual(
                    nn.Sequential(
                        nn.Conv2d(
                            dim, dim, kernel_size, groups=dim,
                            padding='same'), act(), nn.BatchNorm2d(dim))),
                nn.Conv2d(dim, dim, kernel_size=1), act(),
                nn.BatchNorm2d(dim)) for _ in range(depth)
        ], nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
        nn.Linear(dim, n_classes))
