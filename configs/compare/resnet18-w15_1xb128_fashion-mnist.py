# mmpretrain's ResNet-18 in its CIFAR form (3x3 stem, no max pooling) with
# 15/30/60/120 channels instead of 64/.../512, so that its 0.62M parameters
# match ConvMixer-256/8 (0.59M) within 10%.
# base_batch_size = (1 process) x (128 samples) = 128.
_base_ = ['./_base_/fashion-mnist.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        in_channels=1,
        stem_channels=15,
        base_channels=15),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=120))
