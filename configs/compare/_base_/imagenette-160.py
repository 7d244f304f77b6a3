# What the three Imagenette comparison models share. Imagenette
# (https://github.com/fastai/imagenette), 160 px version: extract
# imagenette2-160.tgz into data/, giving data/imagenette2-160/{train,val}/
# <wnid>/*.JPEG (9,469 training and 3,925 validation images, 10 classes).
# Optimiser: the ConvMixer Fashion-MNIST recipe (AdamW, one-cycle), over 40
# epochs (the one-cycle schedule follows max_epochs).
_base_ = [
    '../../_base_/schedules/fashion_mnist_bs128_adamw_onecycle.py',
    '../../_base_/default_runtime.py',
]

dataset_type = 'CustomDataset'
data_root = 'data/imagenette2-160'
# The wnid folders in sorted order, which CustomDataset follows.
classes = ('tench', 'English springer', 'cassette player', 'chain saw',
           'church', 'French horn', 'garbage truck', 'gas pump', 'golf ball',
           'parachute')

model = dict(
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=10,
        # ImageNet mean / std, RGB.
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=160),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    # Arrays given to an inferencer may be gray or have alpha.
    dict(type='ToChannels', channels=3),
    dict(type='ResizeEdge', scale=160, edge='short'),
    dict(type='CenterCrop', crop_size=160),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=4,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='train',
        metainfo=dict(classes=classes),
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=4,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix='val',
        metainfo=dict(classes=classes),
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

train_cfg = dict(by_epoch=True, max_epochs=40, val_interval=1)

default_hooks = dict(logger=dict(interval=20))
randomness = dict(seed=0)
