# What the three CIFAR-10 comparison models share: the data, optimiser and
# 25-epoch one-cycle schedule of the authors' ConvMixer CIFAR-10 recipe
# (configs/convmixer/convmixer-256-8_1xb512_cifar10.py), and the runtime.
# Needs CIFAR-10 in data/cifar10 (mmpretrain's CIFAR10 layout).
_base_ = [
    '../../_base_/datasets/cifar10_bs512_convmixer.py',
    '../../_base_/schedules/cifar10_bs512_adamw_onecycle.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=10,
        # The recipe's CIFAR-10 mean / std, times 255, RGB order.
        mean=[125.307, 122.961, 113.8575],
        std=[63.0105, 62.0925, 66.708],
        to_rgb=False))

default_hooks = dict(logger=dict(interval=20))
randomness = dict(seed=0)
