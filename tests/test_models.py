# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The backbone and head: architecture, contract and parity with timm."""
import copy
import doctest
import warnings

import pytest
import timm
import torch
import torch.nn as nn
from mmengine.config import Config
from timm.models.convmixer import ConvMixer as TimmConvMixer

import convmixer_mm
from conftest import randomize, tiny_classifier
from convmixer_mm.engine.checkpoint import to_mm_layout
from convmixer_mm.models import ConvMixerClsHead, ConvMixerMM
from convmixer_mm.models import convmixer as convmixer_module
from convmixer_mm.models import head as head_module
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

TINY = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=3)
# The paper's Table / mmpretrain's metafile, with a 1000-class head.
PARAMS = {'1536/20': 51625960, '768/32': 21110248, '1024/20': 24383464}
TIMM_NAMES = {
    '1536/20': 'convmixer_1536_20',
    '768/32': 'convmixer_768_32',
    '1024/20': 'convmixer_1024_20_ks9_p14',
}


def test_docstring_examples():
    for module in (convmixer_module, head_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
@pytest.mark.parametrize('arch', list(PARAMS))
def test_imagenet_param_counts_and_shapes(arch):
    model = tiny_classifier(arch, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]
    backbone = model.backbone
    size = 2 * backbone.patch_size
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, size, size))
    assert len(feats) == 1
    assert feats[0].shape == (1, backbone.embed_dims, 2, 2)


def test_imagenet_activations_and_kernels():
    relu = ConvMixerMM('768/32', act_cfg=dict(type='ReLU'))
    assert isinstance(relu.stem[1], nn.ReLU)
    assert relu.stages[0][0].fn[0].kernel_size == (7, 7)
    gelu = ConvMixerMM('1024/20')
    assert isinstance(gelu.stages[3][2], nn.GELU)
    assert gelu.stem[0].stride == (14, 14)
    # One activation module per use, never a shared instance.
    acts = [m for m in gelu.modules() if isinstance(m, nn.GELU)]
    assert len({id(m) for m in acts}) == 1 + 2 * gelu.depth


def test_state_dict_keys_follow_official_nesting():
    keys = set(tiny_classifier(TINY).state_dict())
    for key in ('backbone.stem.0.weight', 'backbone.stem.2.running_mean',
                'backbone.stages.1.0.fn.0.bias',
                'backbone.stages.1.0.fn.2.weight',
                'backbone.stages.1.1.weight', 'backbone.stages.1.3.bias',
                'head.fc.weight', 'head.fc.bias'):
        assert key in keys
    # Every conv carries a bias, as in the official model.
    convs = [m for m in tiny_classifier(TINY).modules()
             if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is not None for m in convs)


@pytest.mark.parametrize('size', [32, 30])
def test_out_indices_and_shapes(size):
    caller = [0, -1]
    model = ConvMixerMM(TINY, out_indices=caller)
    assert caller == [0, -1]
    assert model.out_indices == (0, 1)
    with torch.no_grad():
        outs = model(torch.rand(2, 3, size, size))
    assert [o.shape for o in outs] == [(2, 16, size // 4, size // 4)] * 2
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.slow
@pytest.mark.parametrize('arch', list(TIMM_NAMES))
def test_logits_match_timm_imagenet(arch):
    ref = timm.create_model(TIMM_NAMES[arch], pretrained=False).eval()
    act = dict(type='ReLU') if arch == '768/32' else dict(type='GELU')
    if arch == '768/32':
        # timm builds 768/32 with GELU; the released weights need ReLU.
        ref = TimmConvMixer(768, 32, 7, 7, act_layer=nn.ReLU).eval()
    ours = tiny_classifier(arch, num_classes=1000, act_cfg=act).eval()
    ours.load_state_dict(to_mm_layout(ref.state_dict())[0], strict=True)
    size = 2 * ours.backbone.patch_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize('kernel_size', [3, 4, 5])
def test_logits_match_timm_tiny_even_and_odd_kernels(kernel_size):
    torch.manual_seed(0)
    ref = TimmConvMixer(16, 2, kernel_size, 2, num_classes=10).eval()
    randomize(ref, 0)
    arch = dict(embed_dims=16, depth=2, patch_size=2, kernel_size=kernel_size)
    ours = tiny_classifier(arch).eval()
    ours.load_state_dict(to_mm_layout(ref.state_dict())[0], strict=True)
    x = torch.randn(3, 3, 17, 20)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)
    # The training-mode forward (batch statistics) matches too.
    ref.train()
    ours.train()
    assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_both_convmixers_live_in_one_process():
    from mmpretrain.models.backbones import ConvMixer as BuiltinConvMixer
    ours = MODELS.build(dict(type='ConvMixerMM', arch='1024/20'))
    builtin = MODELS.build(dict(type='ConvMixer', arch='1024/20'))
    assert type(ours) is ConvMixerMM
    assert type(builtin) is BuiltinConvMixer
    # Same keys, so mmpretrain's checkpoints load into ours unchanged.
    missing = ours.load_state_dict(builtin.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    # The built-in train() returns None, so switch modes separately.
    ours.eval()
    builtin.eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], builtin(x)[0], atol=1e-5)


def test_builds_from_config_with_custom_imports(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['convmixer_mm'], "
        'allow_failed_imports=False)\n'
        'model = dict(type="ImageClassifier", backbone=dict(\n'
        '    type="ConvMixerMM", arch=dict(embed_dims=16, depth=2, '
        'patch_size=4, kernel_size=3)),\n'
        '    head=dict(type="ConvMixerClsHead", num_classes=3, '
        'in_channels=16))\n')
    cfg = Config.fromfile(str(cfg_file))
    model = MODELS.build(cfg.model)
    assert isinstance(model.backbone, ConvMixerMM)
    assert isinstance(model.head, ConvMixerClsHead)
    assert convmixer_mm.__version__


@pytest.mark.parametrize('frozen_stages, freeze_stem', [(0, True), (1, False),
                                                        (2, False), (2, True)])
def test_frozen_stages(frozen_stages, freeze_stem):
    # mmpretrain's meaning: k freezes stages[0..k-1]; the stem has its own
    # switch.
    model = ConvMixerMM(
        TINY, frozen_stages=frozen_stages, freeze_stem=freeze_stem)
    assert model.train() is model
    frozen = list(model.stages[:frozen_stages])
    trainable = list(model.stages[frozen_stages:])
    (frozen if freeze_stem else trainable).append(model.stem)
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in trainable:
        assert all(p.requires_grad for p in module.parameters())
        assert all(m.training for m in module.modules())
    # Frozen BN statistics do not move during a training forward.
    before = model.stem[2].running_mean.clone()
    model(torch.randn(2, 3, 16, 16) * 5 + 3)
    assert torch.equal(model.stem[2].running_mean, before) == freeze_stem


def test_frozen_stages_matches_mmpretrain():
    ours = ConvMixerMM(TINY, frozen_stages=1).train()
    theirs = MODELS.build(dict(type='ConvMixer', arch=TINY, frozen_stages=1))
    theirs.train()  # returns None
    assert ([n for n, p in ours.named_parameters() if p.requires_grad] ==
            [n for n, p in theirs.named_parameters() if p.requires_grad])
    assert ([n for n, m in ours.named_modules()
             if isinstance(m, nn.BatchNorm2d) and m.training] ==
            [n for n, m in theirs.named_modules()
             if isinstance(m, nn.BatchNorm2d) and m.training])


def test_no_freezing_by_default():
    model = ConvMixerMM(TINY).train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_with_cp_matches_plain_path():
    torch.manual_seed(0)
    plain = ConvMixerMM(TINY, out_indices=(0, 1)).train()
    ckpt = copy.deepcopy(plain)
    ckpt.with_cp = True
    x = torch.randn(4, 3, 16, 16)
    x_plain = x.clone().requires_grad_()
    x_ckpt = x.clone().requires_grad_()
    outs_plain = plain(x_plain)
    outs_ckpt = ckpt(x_ckpt)
    for a, b in zip(outs_plain, outs_ckpt):
        assert torch.equal(a, b)
    sum(o.square().sum() for o in outs_plain).backward()
    sum(o.square().sum() for o in outs_ckpt).backward()
    assert torch.equal(x_plain.grad, x_ckpt.grad)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # Recomputation must not take a second BN momentum step.
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), name


def test_with_cp_actually_checkpoints():
    model = ConvMixerMM(TINY, with_cp=True).train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randn(2, 3, 16, 16, requires_grad=True))
    cp_count = len(saved)
    saved.clear()
    model.with_cp = False
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randn(2, 3, 16, 16, requires_grad=True))
    assert cp_count < len(saved)


def test_drop_path():
    model = ConvMixerMM(TINY, drop_path_rate=0.5)
    assert model.stages[-1][0].drop_path.drop_prob == pytest.approx(0.5)
    x = torch.randn(8, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    model.train()
    a = model(x)[0]
    model.train()
    b = model(x)[0]
    assert not torch.equal(a, b)
    assert isinstance(ConvMixerMM(TINY).stages[0][0].drop_path, nn.Identity)


def test_head_loss_with_label_smoothing_and_soft_targets():
    head = MODELS.build(
        dict(
            type='ConvMixerClsHead',
            num_classes=4,
            in_channels=16,
            loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                      mode='original')))
    feats = (torch.randn(2, 16, 3, 3), )
    hard = [DataSample().set_gt_label(i) for i in (1, 3)]
    soft = [DataSample().set_gt_score(torch.tensor([.5, .5, 0., 0.]))
            for _ in range(2)]
    assert head.loss(feats, hard)['loss'] > 0
    assert head.loss(feats, soft)['loss'] > 0
    preds = head.predict(feats)
    assert preds[0].pred_score.shape == (4, )
    assert torch.allclose(preds[0].pred_score.sum(), torch.tensor(1.))


def test_head_dropout_and_pooling():
    head = ConvMixerClsHead(num_classes=3, in_channels=16, dropout=0.5)
    assert isinstance(head.dropout, nn.Dropout)
    feats = torch.randn(2, 16, 5, 5)
    pooled = head.pre_logits((torch.randn(2, 16, 5, 5), feats))
    assert torch.allclose(pooled, feats.mean(dim=(2, 3)))


@pytest.mark.parametrize('arch, match', [
    ('512/12', r"Unknown ConvMixer arch '512/12'.*'1024/20'"),
    (dict(embed_dims=16, depth=2), r"missing \['patch_size', 'kernel_size'\]"),
    (dict(TINY, depth=0), r"arch\['depth'\] must be a positive int"),
    (dict(TINY, embed_dimz=8), r"unknown keys \['embed_dimz'\]"),
])
def test_bad_arch(arch, match):
    with pytest.raises(ValueError, match=match):
        ConvMixerMM(arch)


@pytest.mark.parametrize('out_indices', [2, -3, (0, 5)])
def test_bad_out_indices(out_indices):
    with pytest.raises(ValueError, match=r'out of range for depth 2'):
        ConvMixerMM(TINY, out_indices=out_indices)


@pytest.mark.parametrize('frozen_stages', [3, -1])
def test_bad_frozen_stages(frozen_stages):
    with pytest.raises(ValueError, match=r'frozen_stages=.*out of range'):
        ConvMixerMM(TINY, frozen_stages=frozen_stages)


@pytest.mark.parametrize('num_classes', [0, -3])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match=r'num_classes=.*positive int'):
        ConvMixerClsHead(num_classes=num_classes, in_channels=16)


def test_bad_input_channels():
    model = ConvMixerMM(TINY, in_channels=1)
    with pytest.raises(ValueError, match=r'expects input of shape \(B, 1, '
                       r'H, W\), got \(2, 3, 16, 16\).*in_channels'):
        model(torch.randn(2, 3, 16, 16))


def test_patch_larger_than_the_image_is_refused():
    model = ConvMixerMM(dict(TINY, patch_size=32))
    with pytest.raises(
            ValueError,
            match=r'patch_size=32 is larger than the input image \(28, 28\)'):
        model(torch.rand(1, 3, 28, 28))


def test_kernel_beyond_the_token_grid():
    """Taps past 2 * grid - 1 read only padding: a warning (once), and the
    output is that of the kernel cropped to the grid; far past, an error."""
    x = torch.rand(2, 3, 28, 28)
    with pytest.raises(ValueError, match='kernel_size=100 on the 7x7 token'):
        ConvMixerMM(dict(TINY, kernel_size=100))(x)
    wide = ConvMixerMM(dict(TINY, kernel_size=15)).eval()
    with pytest.warns(UserWarning, match='taps beyond 13x13 read only zero'):
        wide(x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with torch.no_grad():
            out = wide(x)[0]
    cropped = ConvMixerMM(dict(TINY, kernel_size=13)).eval()
    state = {
        k: v[..., 1:-1, 1:-1] if v.shape[-2:] == (15, 15) else v
        for k, v in wide.state_dict().items()
    }
    cropped.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(cropped(x)[0], out)
