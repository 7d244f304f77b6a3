# mmpretrain's ImageNet ResNet-18 (7x7 stem, max pooling) with 15/30/60/120
# channels: 0.62M parameters, matching ConvMixer-256/8 (0.64M) within 10%.
# base_batch_size = (1 GPU) x (128 samples per GPU) = 128.
_base_ = ['./_base_/imagenette-160.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet', depth=18, stem_channels=15, base_channels=15),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=120))
