# Copyright (c) convmixer_mm contributors. All rights reserved.
"""FLOPs, training curves, TensorBoard and the comparison study."""
import glob
import json
import os.path as osp

import pytest
import torch
import yaml
from mmengine.analysis import get_model_complexity_info
from mmengine.config import Config
from mmpretrain.models.backbones import ConvMixer, VisionTransformer
from mmpretrain.registry import MODELS

from convmixer_mm.apis.complexity import config_complexity, count_complexity
from convmixer_mm.engine import ConfigError
from convmixer_mm.devtools.compare import (Budget, apply_budget, compare,
                                           train_one)
from convmixer_mm.devtools.curves import epoch_curves, load_scalars
from conftest import REPO, load_tool
from convmixer_mm.models import ConvMixerMM

pytestmark = pytest.mark.slow

COMPARE = osp.join(REPO, 'configs', 'compare')
FASHION = [
    osp.join(COMPARE, name) for name in (
        'convmixer-256-8-p4_1xb128_fashion-mnist.py',
        'resnet18-w15_1xb128_fashion-mnist.py',
        'vit-d128-l4-p4_1xb128_fashion-mnist.py')
]
FASHION_DATA = '/usr/share/datasets/fashion-mnist'
needs_fashion_mnist = pytest.mark.skipif(
    not glob.glob(osp.join(FASHION_DATA, 't10k-images-idx3-ubyte*')),
    reason='apt-get install dataset-fashion-mnist')
# (dims, depth, patch, kernel) of the paper's ImageNet models.
PAPER_ARCHS = {
    '768/32': (768, 32, 7, 7),
    '1024/20': (1024, 20, 14, 9),
    '1536/20': (1536, 20, 7, 9),
}
# FLOPs at 224x224 that mmpretrain's metafile publishes for its ConvMixer.
MMPRETRAIN_FLOPS = {
    '768/32': 19623051264,
    '1024/20': 5550112768,
    '1536/20': 48713170944,
}


def analytic_flops(dims: int, depth: int, patch: int, kernel: int,
                   size: int = 224, classes: int = 1000) -> dict:
    """Multiply-adds of ConvMixer, counted by hand (mmengine conventions:
    convs and the fc, 2 per element for each affine BN, 1 per pooled
    element)."""
    tokens = (size // patch)**2
    stem = 3 * patch * patch * dims * tokens
    block = (kernel * kernel + dims) * dims * tokens
    norms = (2 * depth + 1) * 2 * dims * tokens
    total = stem + depth * block + norms + dims * tokens + dims * classes
    return dict(total=total, depthwise=depth * kernel * kernel * dims * tokens)


def test_imagenet_configs_match_metafile():
    with open(osp.join(REPO, 'configs', 'convmixer', 'metafile.yml')) as f:
        models = yaml.safe_load(f)['Models']
    assert len(models) == 3
    for entry in models:
        cfg = Config.fromfile(osp.join(REPO, entry['Config']))
        result = config_complexity(cfg, (224, 224))
        assert result['input_shape'] == (3, 224, 224)
        assert result['params'] == entry['Metadata']['Parameters']
        assert result['flops'] == pytest.approx(
            entry['Metadata']['FLOPs'], rel=1e-3)
        arch = cfg.model.backbone.arch
        expected = analytic_flops(*PAPER_ARCHS[arch])
        assert result['flops'] == expected['total']
        # mmpretrain's numbers leave out the depthwise convs (padding='same'
        # is skipped by the counter); the rest agrees to 0.5%.
        assert result['flops'] - expected['depthwise'] == pytest.approx(
            MMPRETRAIN_FLOPS[arch], rel=5e-3)
    assert sorted(e['Metadata']['Parameters'] for e in models) == [
        21110248, 24383464, 51625960
    ]


@pytest.mark.parametrize('kernel_size', [3, 4])
def test_same_padding_convs_are_counted(kernel_size):
    arch = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=kernel_size)
    ours = count_complexity(ConvMixerMM(arch), (3, 32, 32))
    # mmpretrain's ConvMixer is an independent implementation with
    # padding='same' on every depthwise conv.
    theirs = ConvMixer(arch)
    theirs.eval()  # mmpretrain's ConvMixer.train() returns None
    assert count_complexity(theirs, (3, 32, 32)) == ours
    depthwise = 2 * 16 * kernel_size**2 * 8 * 8
    plain = get_model_complexity_info(
        theirs, (3, 32, 32), show_table=False, show_arch=False)
    assert ours['flops'] - plain['flops'] == depthwise


def test_attention_is_counted():
    vit = VisionTransformer(
        arch=dict(
            embed_dims=32, num_layers=2, num_heads=4,
            feedforward_channels=64),
        img_size=16,
        patch_size=4)
    vit.eval()
    ours = count_complexity(vit, (3, 16, 16))
    plain = get_model_complexity_info(
        vit, (3, 16, 16), show_table=False, show_arch=False)
    tokens = 16 + 1
    # Q K^T and attn @ V per layer, over all heads: 2 * tokens^2 * dims.
    assert ours['flops'] - plain['flops'] == 2 * 2 * tokens**2 * 32
    with pytest.raises(ValueError, match=r'must be \(C, H, W\)'):
        count_complexity(vit, (16, 16))


def test_get_flops_tool(capsys):
    config = FASHION[1]
    load_tool('tools/analysis_tools/get_flops.py').main(
        [config, '--shape', '28', '28'])
    printed = capsys.readouterr().out
    model = MODELS.build(Config.fromfile(config).model)
    params = sum(p.numel() for p in model.parameters())
    assert 'Input shape: 1x28x28' in printed
    assert f'Params: {params} ' in printed
    with pytest.raises(ConfigError, match='nope.py.* does not exist'):
        config_complexity('configs/nope.py')
    with pytest.raises(ValueError, match=r'shape=\(1, 2, 3, 4\)'):
        config_complexity(config, (1, 2, 3, 4))


@pytest.mark.parametrize('dataset',
                         ['fashion-mnist', 'cifar10', 'imagenette-160'])
def test_comparison_models_have_matched_params(dataset):
    configs = sorted(glob.glob(osp.join(COMPARE, f'*_{dataset}.py')))
    assert [osp.basename(c).split('_')[0].split('-')[0]
            for c in configs] == ['convmixer', 'resnet18', 'vit']
    params = []
    for config in configs:
        model = MODELS.build(Config.fromfile(config).model)
        params.append(sum(p.numel() for p in model.parameters()))
    convmixer = params[0]
    assert 0.5e6 < convmixer < 0.7e6
    for count in params[1:]:
        assert abs(count - convmixer) <= 0.1 * convmixer


def test_budget_is_applied():
    cfg = Config.fromfile(
        osp.join(COMPARE, 'convmixer-256-8-p8_1xb128_imagenette-160.py'))
    assert cfg.train_cfg.max_epochs == 40
    # A schedule that names its end (ours follow max_epochs by default).
    cfg.param_scheduler[0]['end'] = 40
    budgeted = apply_budget(cfg, Budget(2, 100, 50), '/tmp/unused')
    assert budgeted.train_cfg.max_epochs == 2
    # The one-cycle schedule is squeezed into the budget.
    assert budgeted.param_scheduler[0]['end'] == 2
    assert budgeted.train_dataloader.dataset.indices == 100
    assert budgeted.val_dataloader.dataset.indices == 50
    # The source config is left as it was.
    assert cfg.train_cfg.max_epochs == 40
    assert cfg.param_scheduler[0]['end'] == 40
    with pytest.raises(ValueError, match='epochs=0 must be a positive int'):
        Budget(0)
    with pytest.raises(ValueError, match='train_size=-1'):
        Budget(1, train_size=-1)
    cfg.train_cfg = dict(by_epoch=False, max_iters=10)
    with pytest.raises(ValueError, match='epoch-based'):
        apply_budget(cfg, Budget(1), '/tmp/unused')


def test_epoch_curves_and_bad_scalars(tmp_path):
    records = [
        dict(loss=3., lr=0.1, epoch=1, iter=5, step=5),
        dict(loss=1., lr=0.3, epoch=1, iter=10, step=10),
        {'accuracy/top1': 50., 'step': 1},
        dict(loss=0.5, lr=0.2, epoch=2, iter=15, step=15),
        {'accuracy/top1': 75., 'step': 2},
    ]
    assert epoch_curves(records) == {
        'loss': ([1, 2], [2.0, 0.5]),
        'lr': ([1, 2], [pytest.approx(0.2), 0.2]),
        'accuracy/top1': ([1, 2], [50.0, 75.0]),
    }
    with pytest.raises(ValueError, match=r"\['top5'\] not logged"):
        epoch_curves(records, ['loss', 'top5'])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_scalars(str(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='No vis_data/scalars.json'):
        load_scalars(str(tmp_path))
    bad = tmp_path / 'run' / 'vis_data' / 'scalars.json'
    bad.parent.mkdir(parents=True)
    bad.write_text('{"loss": 1.0, "epoch": 1, "step": 1}\nnot json\n')
    with pytest.raises(ValueError, match='scalars.json:2 is not JSON'):
        load_scalars(str(tmp_path))


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """The Fashion-MNIST study on a tiny budget: real data, real models."""
    work_dir = str(tmp_path_factory.mktemp('compare'))
    budget = Budget(epochs=2, train_size=64, val_size=64)
    return work_dir, compare(FASHION, budget, work_dir)


@needs_fashion_mnist
def test_compare_writes_table_plot_and_json(study):
    work_dir, results = study
    names = [osp.splitext(osp.basename(c))[0] for c in FASHION]
    assert [r.name for r in results] == names
    for config, result in zip(FASHION, results):
        model = MODELS.build(Config.fromfile(config).model)
        assert result.params == sum(p.numel() for p in model.parameters())
        assert result.input_shape == [1, 28, 28]
        assert result.flops > 0
        assert 0 <= result.accuracy <= 100
        assert result.accuracy == result.curves['accuracy/top1'][1][-1]
        assert result.curves['loss'][0] == [1, 2]
        assert result.train_images_per_s > 0
        assert result.wall_time_s > 0
    with open(osp.join(work_dir, 'comparison.md')) as f:
        table = f.read()
    assert table.startswith('| Model | Params | FLOPs | Top-1 (%) |')
    assert all(f'| {name} |' in table for name in names)
    assert 'Budget: 2 epochs on the first 64 training images' in table
    with open(osp.join(work_dir, 'comparison.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(osp.join(work_dir, 'comparison.json')) as f:
        saved = json.load(f)
    assert saved['budget']['train_size'] == 64
    assert [r['accuracy'] for r in saved['results']] == [
        r.accuracy for r in results
    ]


@needs_fashion_mnist
def test_plot_curves_tool_on_a_real_run(study, tmp_path, capsys):
    work_dir, results = study
    run_dir = osp.join(work_dir, results[0].name)
    out = str(tmp_path / 'curves.png')
    load_tool('tools/analysis_tools/plot_curves.py').main(
        [run_dir, '--keys', 'loss', 'lr', 'accuracy/top1', '--out', out])
    printed = capsys.readouterr().out
    accuracy = results[0].accuracy
    assert 'accuracy/top1: 1: ' in printed
    assert f'2: {accuracy:.4g}' in printed
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(ValueError, match='not logged'):
        load_tool('tools/analysis_tools/plot_curves.py').main(
            [run_dir, '--keys', 'accuracy/top5'])


@needs_fashion_mnist
def test_tensorboard_vis_backend_writes_event_files(tmp_path):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    config = tmp_path / 'resnet_tb.py'
    # mmengine's standard way, as documented in the README.
    config.write_text(
        f"_base_ = ['{FASHION[1]}']\n"
        "visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), "
        "dict(type='TensorboardVisBackend')])\n")
    result = train_one(
        Config.fromfile(str(config)), 'resnet_tb', Budget(1, 32, 32),
        str(tmp_path / 'run'))
    events = glob.glob(
        str(tmp_path / 'run' / '*' / 'vis_data' / 'events.out.tfevents.*'))
    assert len(events) == 1
    accumulator = EventAccumulator(events[0])
    accumulator.Reload()
    tags = accumulator.Tags()['scalars']
    assert {'loss', 'lr', 'accuracy/top1'} <= set(tags)
    logged = accumulator.Scalars('accuracy/top1')[-1].value
    assert logged == pytest.approx(result.accuracy)
    # scalars.json is still written next to the event file.
    assert load_scalars(str(tmp_path / 'run'))[-1]['accuracy/top1'] == (
        pytest.approx(result.accuracy))



def test_imagenette_pipelines_on_an_imagenette_layout(tmp_path):
    # The configs only: generated JPEGs in Imagenette's folder layout check
    # that the dataset, its class order and both pipelines build and run.
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import DATASETS
    from PIL import Image
    init_default_scope('mmpretrain')
    wnids = [
        'n01440764', 'n02102040', 'n02979186', 'n03000684', 'n03028079',
        'n03394916', 'n03417042', 'n03425413', 'n03445777', 'n03888605'
    ]
    pixels = torch.randint(0, 256, (160, 213, 3), dtype=torch.uint8)
    for split in ('train', 'val'):
        for wnid in wnids:
            (tmp_path / split / wnid).mkdir(parents=True)
            Image.fromarray(pixels.numpy()).save(
                tmp_path / split / wnid / f'{wnid}_1.JPEG')
    cfg = Config.fromfile(
        osp.join(COMPARE, 'convmixer-256-8-p8_1xb128_imagenette-160.py'))
    for loader in ('train_dataloader', 'val_dataloader'):
        cfg[loader].dataset.data_root = str(tmp_path)
        dataset = DATASETS.build(cfg[loader].dataset)
        assert len(dataset) == 10
        item = dataset[3]
        assert item['inputs'].shape == (3, 160, 160)
        assert int(item['data_samples'].gt_label) == 3
        assert dataset.metainfo['classes'][3] == 'chain saw'
