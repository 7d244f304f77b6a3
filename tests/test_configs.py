# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Every config builds; the recipes carry the authors' numbers; one real
training iteration of each ImageNet config; the one-cycle schedule."""
import glob
import os.path as osp

import numpy as np
import pytest
import timm
import torch
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from convmixer_mm.engine import PiecewiseLinearLR, build_runner
from mmpretrain.registry import MODELS, PARAM_SCHEDULERS, TRANSFORMS

CONFIG_DIR = osp.join(osp.dirname(__file__), '..', 'configs', 'convmixer')
CONFIGS = sorted(glob.glob(osp.join(CONFIG_DIR, '*.py')))
# (file stem, timm model, paper's parameter count in millions, kernel,
# patch, activation, epochs)
IMAGENET = [
    ('convmixer-1536-20_10xb64_in1k', 'convmixer_1536_20', 51.6, 9, 7,
     'GELU', 150),
    ('convmixer-768-32_10xb64_in1k', 'convmixer_768_32', 21.1, 7, 7, 'ReLU',
     300),
    ('convmixer-1024-20_10xb64_in1k', 'convmixer_1024_20_ks9_p14', 24.4, 9,
     14, 'GELU', 150),
]


def load(stem: str) -> Config:
    init_default_scope('mmpretrain')
    return Config.fromfile(osp.join(CONFIG_DIR, stem + '.py'))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_configs_are_self_contained():
    assert len(CONFIGS) == 5
    for path in glob.glob(
            osp.join(CONFIG_DIR, '..', '_base_', '**', '*.py'),
            recursive=True) + CONFIGS:
        with open(path) as f:
            assert "'mmpretrain::" not in f.read(), path


@pytest.mark.slow
@pytest.mark.parametrize('stem,timm_name,paper_m,kernel,patch,act,epochs',
                         IMAGENET)
def test_imagenet_model_matches_timm(stem, timm_name, paper_m, kernel, patch,
                                     act, epochs):
    cfg = load(stem)
    model = MODELS.build(cfg.model)
    reference = timm.create_model(timm_name, pretrained=False)
    assert n_params(model) == n_params(reference)
    assert n_params(model) / 1e6 == pytest.approx(paper_m, abs=0.05)
    stem_conv = model.backbone.stem[0]
    assert stem_conv.kernel_size == (patch, patch)
    assert model.backbone.stages[0][0].fn[0].kernel_size == (kernel, kernel)
    assert type(model.backbone.stem[1]).__name__ == act


def test_small_configs_build():
    cifar = MODELS.build(load('convmixer-256-8_1xb512_cifar10').model)
    reference = timm.models.convmixer.ConvMixer(
        dim=256, depth=8, kernel_size=5, patch_size=2, num_classes=10)
    assert n_params(cifar) == n_params(reference)
    fmnist = MODELS.build(
        load('convmixer-128-4-p4_1xb128_fashion-mnist').model)
    with torch.no_grad():
        out = fmnist(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)


@pytest.mark.parametrize('stem,timm_name,paper_m,kernel,patch,act,epochs',
                         IMAGENET)
def test_imagenet_recipe(stem, timm_name, paper_m, kernel, patch, act,
                         epochs):
    cfg = load(stem)
    optim = cfg.optim_wrapper
    assert optim.type == 'MixedPrecisionOptimWrapper'
    assert optim.optimizer == dict(
        type='AdamW', lr=0.01, weight_decay=2e-5, eps=1e-3,
        betas=(0.9, 0.999))
    assert optim.paramwise_cfg == dict(
        norm_decay_mult=0., bias_decay_mult=0.)
    assert optim.clip_grad.max_norm == 1.0
    assert cfg.train_dataloader.batch_size == 64
    assert cfg.auto_scale_lr.base_batch_size == 640
    assert cfg.train_cfg.max_epochs == epochs
    [sched] = cfg.param_scheduler
    assert sched.type == 'PiecewiseLinearLR'
    assert sched.convert_to_iter_based and 'end' not in sched
    assert sched.milestones == (0., 0.4, 0.8, 1.)
    assert sched.factors == (0., 1., 0.05, 0.)

    train = {t['type']: t for t in cfg.train_pipeline}
    crop = train['RandomResizedCrop']
    assert (crop.scale, crop.crop_ratio_range, crop.interpolation) == (
        224, (0.08, 1.0), 'bicubic')
    assert train['RandomFlip'].prob == 0.5
    aug = train['RandAugment']
    assert (aug.policies, aug.num_policies, aug.magnitude_level,
            aug.total_level, aug.magnitude_std) == ('timm_increasing', 2, 9,
                                                    10, 0.5)
    erase = train['RandomErasing']
    assert (erase.erase_prob, erase.mode) == (0.25, 'rand')
    assert erase.fill_std == [57.375, 57.12, 58.395]
    test = {t['type']: t for t in cfg.test_pipeline}
    assert (test['ResizeEdge'].scale, test['ResizeEdge'].interpolation,
            test['CenterCrop'].crop_size) == (233, 'bicubic', 224)

    model = cfg.model
    assert model.data_preprocessor.type == 'ConvMixerDataPreprocessor'
    assert model.data_preprocessor.mean == [123.675, 116.28, 103.53]
    assert model.data_preprocessor.std == [58.395, 57.12, 57.375]
    assert model.data_preprocessor.to_rgb
    assert model.train_cfg.augments == [
        dict(type='Mixup', alpha=0.5),
        dict(type='CutMix', alpha=0.5)
    ]
    assert model.head.loss == dict(
        type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    assert model.backbone.act_cfg.type == act


def _fake_imagenet(root: str, n: int = 4) -> None:
    """A few JPEGs of random content with an annotation file."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        path = osp.join(root, 'train', f'img{i}.jpg')
        size = (int(rng.integers(240, 320)), int(rng.integers(240, 320)))
        Image.fromarray(rng.integers(0, 256, size + (3, ),
                                     np.uint8)).save(path)
        lines.append(f'img{i}.jpg {i * 100}')
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


@pytest.mark.slow
@pytest.mark.parametrize('stem,timm_name,paper_m,kernel,patch,act,epochs',
                         IMAGENET)
def test_imagenet_one_training_iteration(tmp_path, stem, timm_name, paper_m,
                                         kernel, patch, act, epochs):
    """The real pipeline, batch augments, AMP wrapper, schedule and runner,
    with the backbone shrunk to 16 channels and depth 2 for a CPU test."""
    (tmp_path / 'train').mkdir()
    (tmp_path / 'meta').mkdir()
    _fake_imagenet(str(tmp_path))
    cfg = load(stem)
    cfg.model.backbone.arch = dict(
        embed_dims=16, depth=2, patch_size=patch, kernel_size=kernel)
    cfg.merge_from_dict({
        'model.head.in_channels': 16,
        'train_dataloader.batch_size': 2,
        'train_dataloader.num_workers': 0,
        'train_dataloader.dataset.data_root': str(tmp_path),
        'train_cfg.max_epochs': 1,
        'default_hooks.logger.interval': 1,
    })
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.work_dir = str(tmp_path / 'work')
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 2
    pipeline = runner.train_dataloader.dataset.pipeline
    steps = {type(t).__name__ for t in pipeline.transforms}
    assert {'RandomResizedCrop', 'RandAugment', 'RandomErasing'} <= steps
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert np.isfinite(losses).all() and len(losses) == 2
    # The scheduler set the lr of the second iteration, 2 / 2 of the way
    # through: the end of the one-cycle schedule.
    assert runner.optim_wrapper.get_lr()['lr'][0] == pytest.approx(0.)
    batch = next(iter(runner.train_dataloader))
    data = runner.model.data_preprocessor(batch, training=True)
    assert data['inputs'].shape == (2, 3, 224, 224)
    for sample in data['data_samples']:
        # Mixup / CutMix turned the labels into soft scores.
        assert sample.gt_score.shape == (1000, )
        assert float(sample.gt_score.sum()) == pytest.approx(1.)


def test_cifar_pipeline_is_torchvision_randaugment():
    cfg = load('convmixer-256-8_1xb512_cifar10')
    pipeline = Compose(cfg.train_pipeline)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert 'RandAugment' in str(pipeline.transforms[2])
    assert names[0] == 'NumpyToPIL' and names[-1] == 'PackInputs'
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    out = pipeline(dict(img=img, gt_label=3))
    assert out['inputs'].shape == (3, 32, 32)
    assert cfg.optim_wrapper.optimizer.lr == 0.05
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.005
    assert cfg.train_dataloader.batch_size == 512
    assert cfg.train_cfg.max_epochs == 25
    assert TRANSFORMS.get('torchvision/RandAugment') is not None


def _lrs(milestones=(0., 0.4, 0.8, 1.), factors=(0., 1., 0.05, 0.),
         epochs=150, epoch_length=10):
    """The lr of every iteration under the scheduler built as the ImageNet
    configs build it (epoch-based, converted to iterations)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    scheduler = PARAM_SCHEDULERS.build(
        dict(
            type='PiecewiseLinearLR',
            milestones=milestones,
            factors=factors,
            by_epoch=True,
            begin=0,
            end=epochs,
            convert_to_iter_based=True),
        default_args=dict(optimizer=optimizer, epoch_length=epoch_length))
    lrs = []
    for _ in range(epochs * epoch_length):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return np.array(lrs), scheduler


def test_schedule_lr_at_0_40_80_100_percent():
    lrs, scheduler = _lrs()
    total = len(lrs)
    assert total == 1500
    # Iteration i runs at lr(progress (i + 1) / total), as the authors'
    # train.py sets lr_schedule(epoch + (i + 1) / len(loader)) before it.
    at = {p: lrs[round(p * total) - 1] for p in (0.4, 0.8, 1.0)}
    assert at[0.4] == pytest.approx(0.01)
    assert at[0.8] == pytest.approx(0.0005)
    assert at[1.0] == pytest.approx(0.)
    # 0%: the schedule starts from 0; the first step takes one increment.
    assert scheduler.factor_at(0.) == 0.
    assert lrs[0] == pytest.approx(0.01 / 600)
    # The authors' formula, evaluated independently.
    epochs, length = 150, 10
    authors = [
        np.interp([e + (i + 1) / length],
                  [0, epochs * 2 // 5, epochs * 4 // 5, epochs],
                  [0, 0.01, 0.01 / 20.0, 0])[0] for e in range(epochs)
        for i in range(length)
    ]
    np.testing.assert_allclose(lrs, authors, rtol=1e-9, atol=1e-12)


def test_schedule_resumes_from_state_dict():
    lrs, _ = _lrs(epochs=10)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    first = PiecewiseLinearLR(optimizer, end=100, by_epoch=False)
    for _ in range(37):
        optimizer.step()
        first.step()
    state = first.state_dict()
    optimizer2 = torch.optim.AdamW([param], lr=0.01)
    optimizer2.load_state_dict(optimizer.state_dict())
    second = PiecewiseLinearLR(optimizer2, end=100, by_epoch=False)
    second.load_state_dict(state)
    resumed = []
    for _ in range(63):
        optimizer2.step()
        second.step()
        resumed.append(optimizer2.param_groups[0]['lr'])
    np.testing.assert_allclose(resumed[:-1], lrs[38:], rtol=1e-12)


def test_schedule_bad_arguments():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.)
    with pytest.raises(ValueError, match='must increase from 0 to 1'):
        PiecewiseLinearLR(optimizer, milestones=(0, .5, .4, 1), end=10)
    with pytest.raises(ValueError, match='same length'):
        PiecewiseLinearLR(optimizer, factors=(0, 1), end=10)
    with pytest.raises(ValueError, match='needs a finite `end`'):
        PiecewiseLinearLR(optimizer)
