# ConvMixer-256/8 (kernel 5, patch 8: a 20x20 token grid) on Imagenette at
# 160 px, 0.64M parameters; paired with resnet18-w15_* and vit-d128-l4-p16_*
# at the same parameter count (within 10%).
# base_batch_size = (1 GPU) x (128 samples per GPU) = 128.
_base_ = ['./_base_/imagenette-160.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ConvMixerMM',
        arch=dict(embed_dims=256, depth=8, patch_size=8, kernel_size=5)),
    head=dict(type='ConvMixerClsHead', num_classes=10, in_channels=256))
