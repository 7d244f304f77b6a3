# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Fast paths keep the numerics of the fp32 reference.

Stated tolerances (max abs logit error over max abs logit): the default
fused eval path, fuse_convmixer and channels_last in fp32 1e-5; bf16
autocast 3e-2. The unfused reference is the same model run with gradients
on, where it never fuses. (with_cp is tested in test_models.py.) Tiny
models, CPU, seconds.
"""
import copy
import glob
import os.path as osp
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import randomize, tiny_classifier
from convmixer_mm.engine import CompileModelHook
from convmixer_mm.models import (ConvMixerDataPreprocessor, ConvMixerMM,
                                 fuse_convmixer)
from convmixer_mm.models import fused as fused_module
from convmixer_mm.models.fast import FusedConvMixerBlock
from convmixer_mm.models.ops.dwconv import dwconv_block_, kernel_available
from mmengine.config import Config
from mmpretrain.registry import MODELS

TINY = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=5)
FP32_TOL = 1e-5
BF16_TOL = 3e-2


def build_classifier(arch: dict = TINY, act: str = 'GELU',
                     seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(tiny_classifier(arch, act_cfg=dict(type=act)), seed)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def unfused(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain eval-mode forward: with gradients on nothing is fused."""
    with torch.enable_grad():
        return model(x, mode='tensor').detach()


def fused(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The default inference forward, asserting that it ran fused."""
    model.backbone.__dict__.pop('_fused', None)
    with torch.no_grad():
        out = model(x, mode='tensor')
    assert '_fused' in model.backbone.__dict__, 'the fused path did not run'
    return out


CONFIGS = sorted(
    glob.glob(
        osp.join(osp.dirname(__file__), '..', 'configs', 'convmixer',
                 '*.py')))


@pytest.mark.parametrize('config', CONFIGS, ids=osp.basename)
def test_default_eval_path_matches_unfused_for_every_shipped_arch(config):
    """Each shipped model (kernel, patch, activation, channels, layout as
    configured; width and depth shrunk) infers fused and exactly."""
    cfg = Config.fromfile(config).model
    arch = ConvMixerMM.parse_arch(cfg.backbone.get('arch', '768/32'))
    arch.update(embed_dims=16, depth=2)
    cfg.backbone.arch = arch
    cfg.head.in_channels = 16
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    randomize(model, 0)
    model.eval()
    channels = cfg.backbone.get('in_channels', 3)
    size = 8 * arch['patch_size']
    inputs = [torch.randint(0, 256, (channels, size, size),
                            dtype=torch.uint8) for _ in range(3)]
    x = model.data_preprocessor(dict(inputs=inputs))['inputs']
    assert rel_err(fused(model, x), unfused(model, x)) < FP32_TOL


def test_fuse_eval_switch_and_unchanged_state_dict():
    model = build_classifier()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused(model, x)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    off = build_classifier()
    off.backbone.fuse_eval = False
    with torch.no_grad():
        off(x, mode='tensor')
    assert '_fused' not in off.backbone.__dict__
    built = MODELS.build(
        dict(type='ConvMixerMM', arch=TINY, fuse_eval=False))
    assert built.fuse_eval is False
    assert list(built.state_dict()) == list(model.backbone.state_dict())


def test_fused_cache_follows_training_and_loading():
    """train -> eval -> optimizer step -> eval gives fresh results."""
    model = build_classifier()
    x = torch.randn(4, 3, 32, 32)
    first = fused(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(x, mode='tensor').square().mean().backward()  # BN stats move too
    optimizer.step()
    model.eval()
    with torch.no_grad():
        second = model(x, mode='tensor')
    assert rel_err(second, first) > 1e-3, 'stale fused weights were used'
    assert rel_err(second, unfused(model, x)) < FP32_TOL
    other = build_classifier(seed=1)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        third = model(x, mode='tensor')
    assert rel_err(third, unfused(other, x)) < FP32_TOL
    # A deep copy (EMA hooks, checkpoints) drops the cache, not the model.
    clone = copy.deepcopy(model)
    assert '_fused' not in clone.backbone.__dict__
    with torch.no_grad():
        torch.testing.assert_close(clone(x, mode='tensor'), third)


@pytest.mark.parametrize('built_inside', [False, True])
def test_default_eval_path_under_inference_mode(built_inside):
    """torch.inference_mode (PyTorch's advice for inference) runs the fused
    path too, also for a model built under it, whose tensors have no
    version counter; the C block kernel writes into inference tensors."""
    x = torch.randn(2, 3, 32, 32).contiguous(
        memory_format=torch.channels_last)
    if built_inside:
        with torch.inference_mode():
            model = build_classifier().eval()
    else:
        model = build_classifier().eval()
    ref = unfused(model, x) if not built_inside else None
    with torch.inference_mode():
        out = model(x, mode='tensor')
        assert '_fused' in model.backbone.__dict__
        plain = model(x.contiguous(), mode='tensor')  # the oneDNN-only path
        with torch.autocast('cpu', dtype=torch.bfloat16):
            half = model(x, mode='tensor')
    assert rel_err(plain, out) < FP32_TOL
    assert rel_err(half, out) < BF16_TOL
    if ref is not None:
        assert rel_err(out, ref) < FP32_TOL


def test_default_eval_path_with_compile_and_with_cp():
    model = build_classifier()
    x = torch.randn(2, 3, 32, 32)
    ref = unfused(model, x)
    backbone = model.backbone
    with torch.no_grad():
        # dynamo traces the plain modules (and inductor fuses them itself).
        compiled = torch.compile(backbone, backend='eager')(x)[0]
    assert '_fused' not in backbone.__dict__
    with torch.enable_grad():
        torch.testing.assert_close(compiled, backbone(x)[0].detach())
    cp = build_classifier()
    cp.backbone.with_cp = True
    assert rel_err(fused(cp, x), ref) < FP32_TOL


@pytest.mark.parametrize('channels_last', [False, True])
def test_fuse_matches_unfused_fp32(channels_last, monkeypatch):
    """channels_last input takes the C block kernel, as without
    fuse_convmixer; contiguous input the oneDNN-only blocks."""
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return dwconv_block_(*args)

    monkeypatch.setattr(fused_module, 'dwconv_block_', counted)
    model = build_classifier()
    x = torch.randn(3, 3, 32, 32)
    ref = unfused(model, x)
    with torch.no_grad():
        fused = fuse_convmixer(copy.deepcopy(model))
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        out = fused(x, mode='tensor')
    assert isinstance(fused.backbone.stages[0], FusedConvMixerBlock)
    expected = TINY['depth'] if channels_last and kernel_available() else 0
    assert len(calls) == expected
    assert rel_err(out, ref) < FP32_TOL
    # The check is sharp enough to see a dropped BN shift.
    fused.backbone.stages[0].pw.bias.add_(0.1)
    with torch.no_grad():
        assert rel_err(fused(x, mode='tensor'), ref) > 10 * FP32_TOL


@pytest.mark.parametrize('act,kernel', [('ReLU', 3), ('GELU', 4)])
def test_fuse_relu_and_even_kernels(act, kernel):
    model = build_classifier(dict(TINY, kernel_size=kernel), act=act)
    x = torch.randn(2, 3, 31, 29)
    ref = unfused(model, x)
    with torch.no_grad():
        out = fuse_convmixer(model)(x, mode='tensor')
    assert rel_err(out, ref) < FP32_TOL


def test_fuse_keeps_every_out_index_and_odd_kernels():
    arch = dict(embed_dims=8, depth=3, patch_size=2, kernel_size=3)
    torch.manual_seed(1)
    backbone = ConvMixerMM(arch=arch, out_indices=(0, 1, 2)).eval()
    randomize(backbone, 1)
    x = torch.randn(2, 3, 12, 12)
    refs = backbone(x)
    with torch.no_grad():
        outs = fuse_convmixer(copy.deepcopy(backbone))(x)
    assert len(outs) == 3
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) < FP32_TOL


def test_fused_packed_weights_follow_load_state_dict():
    model = build_classifier(seed=0)
    other = build_classifier(seed=1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = fuse_convmixer(copy.deepcopy(model))
        fused(x, mode='tensor')  # fills the packed-weight cache
        fused_other = fuse_convmixer(copy.deepcopy(other))
        fused.load_state_dict(fused_other.state_dict())
        assert rel_err(fused(x, mode='tensor'),
                       unfused(other, x)) < FP32_TOL


def test_fuse_bf16_autocast_within_tolerance():
    model = build_classifier()
    x = torch.randn(2, 3, 32, 32)
    ref = unfused(model, x)
    with torch.no_grad():
        fused = fuse_convmixer(copy.deepcopy(model))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = fused(x, mode='tensor')
            eager = model(x, mode='tensor')
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < BF16_TOL
    assert rel_err(eager, ref) < BF16_TOL


def test_channels_last_preprocessor_matches_contiguous():
    model = build_classifier()
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
              for _ in range(2)]
    data = dict(inputs=images)
    outs = []
    for channels_last in (False, True):
        pre = ConvMixerDataPreprocessor(
            channels_last=channels_last, mean=[128.] * 3, std=[64.] * 3)
        inputs = pre(copy.deepcopy(data))['inputs']
        assert inputs.is_contiguous(memory_format=torch.channels_last) == \
            channels_last
        with torch.no_grad():
            outs.append(model(inputs, mode='tensor'))
    assert rel_err(outs[1], outs[0]) < FP32_TOL


def test_fuse_refuses_what_it_cannot_fuse():
    model = build_classifier()
    with pytest.raises(RuntimeError, match='eval-mode'):
        fuse_convmixer(model.train())
    with pytest.raises(TypeError, match='exact GELU or ReLU'):
        fuse_convmixer(build_classifier(act='SiLU'))
    with pytest.raises(TypeError, match='No ConvMixerMM'):
        fuse_convmixer(nn.Conv2d(3, 3, 1).eval())
    with pytest.raises(TypeError, match='drop path'):
        fuse_convmixer(
            ConvMixerMM(arch=TINY, drop_path_rate=0.1).eval())


def test_fused_model_is_inference_only():
    fused = fuse_convmixer(build_classifier())
    assert fused.eval() is fused
    with pytest.raises(RuntimeError, match='inference-only'):
        fused.train()
    # deepcopy re-binds the guard to the copy.
    clone = copy.deepcopy(fused)
    assert clone.eval() is clone
    with pytest.raises(RuntimeError, match='inference-only'):
        clone.train()



@pytest.mark.slow
def test_compile_hook_compiles_in_place_and_keeps_keys():
    model = build_classifier()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x, mode='tensor')
    # The hook reads only runner.model; 'eager' skips code generation.
    hook = CompileModelHook(backend='eager')
    hook.before_run(types.SimpleNamespace(model=model))
    assert model.backbone._compiled_call_impl is not None
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x, mode='tensor'), ref)
    with pytest.raises(ValueError, match="no submodule 'neck'"):
        CompileModelHook(modules=['neck']).before_run(
            types.SimpleNamespace(model=model))


def test_compile_hook_without_a_compiler_trains_eager(monkeypatch):
    model = build_classifier()
    monkeypatch.setenv('PATH', '')
    with pytest.warns(UserWarning, match='no C\\+\\+ compiler'):
        CompileModelHook().before_run(types.SimpleNamespace(model=model))
    assert model.backbone._compiled_call_impl is None


def check_block_kernel(act: str, kernel: int, size: tuple, affine: bool,
                       channels: int = 37, batch: int = 2) -> None:
    """The C inference block against F.conv2d: the pending BN applied on
    the way in, zero 'same' padding, activation, scale and residual."""
    if not kernel_available():
        pytest.skip('no C compiler: the kernel is not built')
    torch.manual_seed(kernel)
    x = torch.randn(batch, channels, *size).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel, kernel) / kernel
    bias, out_scale = torch.randn(channels), torch.randn(channels)
    scale, shift = (torch.rand(channels) + 0.5, torch.randn(channels)) \
        if affine else (None, None)
    xin = x if not affine else \
        x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    conv = nn.Conv2d(channels, channels, kernel, padding='same',
                     groups=channels)
    conv.weight.data, conv.bias.data = weight, bias
    with torch.no_grad():
        h = conv(xin)
    h = torch.relu(h) if act == 'relu' else F.gelu(h)
    ref = xin + out_scale.view(1, -1, 1, 1) * h
    out = x.clone()
    assert dwconv_block_(out, scale, shift, weight, bias, out_scale,
                         act) is None
    assert rel_err(out, ref) < FP32_TOL


def test_dwconv_block_kernel_wants_channels_last():
    """In place, it cannot write into a copy: other layouts are refused."""
    x = torch.randn(1, 4, 5, 5)
    w, b = torch.randn(4, 1, 3, 3), torch.randn(4)
    with pytest.raises(ValueError, match='channels_last'):
        dwconv_block_(x, None, None, w, b, b, 'relu')


@pytest.mark.parametrize('act', ['relu', 'gelu'])
@pytest.mark.parametrize('kernel,size', [(3, (9, 11)), (4, (9, 11)),
                                         (9, (9, 11)), (7, (32, 32)),
                                         (5, (3, 7)), (11, (17, 8)),
                                         (7, (1, 1))])
@pytest.mark.parametrize('affine', [False, True])
def test_dwconv_block_kernel_matches_torch(act, kernel, size, affine):
    """Specialised (3, 5, 7, 9) and generic kernels, even and odd; rows of
    whole eight-pixel runs, with a remainder, and narrower than one; 37
    channels, not a multiple of the vector width."""
    check_block_kernel(act, kernel, size, affine)


@pytest.mark.parametrize('threads', [1, 2])
def test_dwconv_block_kernel_groups_of_channel_blocks(threads):
    """With few threads a task runs several channel blocks in turn (83
    channels: a full group of four and a last, short one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_block_kernel('gelu', 7, (10, 9), True, channels=83)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('act', ['relu', 'gelu'])
def test_dwconv_block_kernel_in_bf16(act):
    """bf16 in and out, computed in fp32: the fp32 kernel's result on the
    same (bf16-valued) input, rounded once to bf16."""
    if not kernel_available():
        pytest.skip('no C compiler: the kernel is not built')
    torch.manual_seed(0)
    channels = 37
    x = torch.randn(2, channels, 9, 11).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, 7, 7) / 7
    bias, out_scale, scale, shift = (torch.randn(channels)
                                     for _ in range(4))
    out, ref = x.clone(), x.float()
    dwconv_block_(out, scale, shift, weight, bias, out_scale, act)
    dwconv_block_(ref, scale, shift, weight, bias, out_scale, act)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.to(torch.bfloat16))  # torch's rounding


def test_bf16_autocast_runs_the_block_kernel(monkeypatch):
    """Under bf16 autocast the default eval path also takes the C kernel,
    and stays within the bf16 tolerance of the fp32 reference."""
    if not kernel_available():
        pytest.skip('no C compiler: the kernel is not built')
    calls = []

    def counted(*args):
        calls.append(args[0].dtype)
        return dwconv_block_(*args)

    monkeypatch.setattr(fused_module, 'dwconv_block_', counted)
    model = build_classifier()
    x = torch.randn(2, 3, 32, 32).contiguous(
        memory_format=torch.channels_last)
    ref = unfused(model, x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = fused(model, x)
        feats = model.backbone(x)
    assert calls and set(calls) == {torch.bfloat16}
    assert feats[-1].dtype == torch.bfloat16
    assert rel_err(out, ref) < BF16_TOL


@pytest.mark.parametrize('act', ['GELU', 'ReLU'])
def test_fused_paths_with_and_without_the_c_kernel_agree(act):
    """channels_last fp32 input takes the C block kernel (each BN applied
    by the next block), contiguous input the oneDNN-only path; both match
    the unfused model at every out index."""
    torch.manual_seed(0)
    backbone = ConvMixerMM(
        arch=dict(TINY, depth=3), act_cfg=dict(type=act),
        out_indices=(0, 2))
    randomize(backbone, 0)
    x = torch.randn(2, 3, 36, 32)
    refs = backbone(x)
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            outs = backbone(x.contiguous(memory_format=layout))
        assert len(outs) == 2
        for out, ref in zip(outs, refs):
            assert rel_err(out, ref.detach()) < FP32_TOL
