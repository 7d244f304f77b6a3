# The ImageNet-1k ConvMixer classifier with the authors' training-time
# choices; convmixer-{1536-20,768-32,1024-20}.py set the architecture.
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        type='ConvMixerDataPreprocessor',
        num_classes=1000,
        # ImageNet mean / std in RGB order on 0-255 (timm
        # IMAGENET_DEFAULT_MEAN / STD, the default_cfg of timm's ConvMixer).
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        # Images are loaded as BGR.
        to_rgb=True,
        # channels_last is faster on CPU (README, Performance).
        channels_last=True,
        # Mixup/CutMix need one-hot labels; said here, mmpretrain need not
        # announce it on every start.
        to_onehot=True),
    backbone=dict(type='ConvMixerMM'),
    head=dict(
        type='ConvMixerClsHead',
        num_classes=1000,
        # timm --smoothing 0.1 (its default, kept by the authors' command).
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
    ),
    # Authors' command: --mixup 0.5 --cutmix 0.5; timm's Mixup then picks
    # one of the two per batch with --mixup-switch-prob 0.5 (default).
    # RandomBatchAugment chooses among its augments with equal probability.
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.5),
        dict(type='CutMix', alpha=0.5),
    ]),
)
