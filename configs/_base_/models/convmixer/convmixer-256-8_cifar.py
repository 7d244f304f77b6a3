# ConvMixer-256/8 with kernel 5 and patch 2 for CIFAR-10, as the authors'
# quick CIFAR-10 script (https://github.com/locuslab/convmixer-cifar10,
# train.py defaults --hdim 256 --depth 8 --psize 2 --conv-ks 5).
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        type='ConvMixerDataPreprocessor',
        num_classes=10,
        # train.py's cifar10_mean / cifar10_std, times 255, RGB order.
        mean=[125.307, 122.961, 113.8575],
        std=[63.0105, 62.0925, 66.708],
        # mmpretrain's CIFAR10 already yields RGB.
        to_rgb=False,
        # channels_last trains faster on CPU (README, Performance).
        channels_last=True),
    backbone=dict(
        type='ConvMixerMM',
        arch=dict(embed_dims=256, depth=8, patch_size=2, kernel_size=5),
        # nn.GELU, as train.py.
        act_cfg=dict(type='GELU')),
    head=dict(
        type='ConvMixerClsHead',
        num_classes=10,
        in_channels=256,
        # nn.CrossEntropyLoss without label smoothing, as train.py.
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ),
)
