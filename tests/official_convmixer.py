# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Reference models for the converter and API tests."""
import torch
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


def randomize(model, seed):
    """Random BN statistics and affine terms, so that parity covers them;
    returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.normal_(1, 0.2, generator=gen)
                m.bias.normal_(0, 0.2, generator=gen)
                m.num_batches_tracked.fill_(7)
    return model.eval()
