# ImageNet-1k pipelines of the ConvMixer authors' timm command
# (https://github.com/locuslab/convmixer, README "Training"):
#   -b 64 --input-size 3 224 224 --aa rand-m9-mstd0.5-inc1
#   --reprob 0.25 --remode pixel, test crop_pct 0.96.
dataset_type = 'ImageNet'
# ImageNet mean / std (timm IMAGENET_DEFAULT_MEAN / STD) in BGR order, the
# order of the loaded images, for padding and erasing.
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    # timm's RandomResizedCropAndInterpolation: scale (0.08, 1) and ratio
    # (3/4, 4/3) are timm's defaults; bicubic as the recipe (timm's
    # default --train-interpolation is 'random', see the README).
    dict(
        type='RandomResizedCrop',
        scale=224,
        crop_ratio_range=(0.08, 1.0),
        aspect_ratio_range=(3. / 4., 4. / 3.),
        backend='pillow',
        interpolation='bicubic'),
    # timm --hflip 0.5 (default).
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    # --aa rand-m9-mstd0.5-inc1: 2 ops (timm default n), magnitude 9 of
    # 10, std 0.5, the "increasing" op set; timm pads with the mean colour
    # and rotates / shears bicubically.
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(
            pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    # --reprob 0.25 --remode pixel: erase 2%-33% of the area (timm's
    # defaults) with per-pixel normal noise, i.e. mode 'rand' with the
    # dataset's mean / std.
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    # Arrays given to an inferencer may be gray or have alpha.
    dict(type='ToChannels', channels=3),
    # timm default_cfg of ConvMixer: crop_pct 0.96, bicubic, so the short
    # edge goes to int(224 / 0.96) = 233 before the 224 centre crop.
    dict(
        type='ResizeEdge',
        scale=233,
        edge='short',
        backend='pillow',
        interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    # -b 64 per GPU.
    batch_size=64,
    num_workers=10,
    dataset=dict(
        type=dataset_type,
        data_root='data/imagenet',
        split='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=64,
    num_workers=10,
    dataset=dict(
        type=dataset_type,
        data_root='data/imagenet',
        split='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
