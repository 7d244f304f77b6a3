# What the three Fashion-MNIST comparison models share: the data, the
# optimiser and schedule of the ConvMixer Fashion-MNIST recipe, and the
# runtime. Only `model` differs between them.
_base_ = [
    '../../_base_/datasets/fashion_mnist_bs128.py',
    '../../_base_/schedules/fashion_mnist_bs128_adamw_onecycle.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=10,
        # Fashion-MNIST training set mean / std (0.2860, 0.3530) x 255.
        mean=[72.94],
        std=[90.02],
        to_rgb=False))

default_hooks = dict(
    logger=dict(interval=50), checkpoint=dict(interval=1, max_keep_ckpts=1))
randomness = dict(seed=0)
