# A small ConvMixer for 28x28 grayscale Fashion-MNIST: 128 channels,
# depth 4, kernel 5, patch 4 (a 7x7 token grid). It trains in a few
# minutes on 2 CPU cores.
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        type='ConvMixerDataPreprocessor',
        num_classes=10,
        # Fashion-MNIST training set mean / std (0.2860, 0.3530) x 255.
        mean=[72.94],
        std=[90.02],
        to_rgb=False,
        # channels_last trains faster on CPU (README, Performance).
        channels_last=True),
    backbone=dict(
        type='ConvMixerMM',
        arch=dict(embed_dims=128, depth=4, patch_size=4, kernel_size=5),
        in_channels=1,
        act_cfg=dict(type='GELU')),
    head=dict(
        type='ConvMixerClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ),
)
