# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The C depthwise conv: parity with F.conv2d and timm, fallback, switch."""
import logging

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from timm.models.convmixer import ConvMixer as TimmConvMixer

from convmixer_mm.models import ConvMixerMM
from convmixer_mm.models.ops import DepthwiseConv2d, kernel_available
from convmixer_mm.models.ops import dwconv as dwconv_module

CL = torch.channels_last
TINY = dict(embed_dims=16, depth=2, patch_size=2, kernel_size=8)


def ran_kernel(out: torch.Tensor) -> bool:
    """Whether autograd recorded our op (before a layout conversion)."""
    fn = out.grad_fn
    if type(fn).__name__ == 'CloneBackward0':
        fn = fn.next_functions[0][0]
    return 'dwconv_nhwc' in type(fn).__name__


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def reference(conv: DepthwiseConv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(
        x, conv.weight, conv.bias, padding='same', groups=conv.groups)


@pytest.fixture(scope='module', autouse=True)
def kernel():
    assert kernel_available(), 'these tests need a C compiler'


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty kernel cache, a fresh load, and the log lines emitted."""
    monkeypatch.setenv('CONVMIXER_MM_KERNEL_DIR', str(tmp_path))
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    dwconv_module._library.cache_clear()
    yield lines
    dwconv_module._library.cache_clear()
    logger.removeHandler(handler)


@pytest.mark.parametrize('kernel_size', [3, 5, 7, 8, 9])
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('bias', [True, False])
def test_matches_conv2d(kernel_size, batch, channels_last, bias):
    torch.manual_seed(kernel_size)
    # 21 channels: full and partial blocks of the kernel's vectors.
    conv = DepthwiseConv2d(21, kernel_size, bias=bias)
    x = torch.randn(batch, 21, 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    x.requires_grad_()
    out, ref = conv(x), reference(conv, x)
    assert ran_kernel(out)
    assert out.is_contiguous(memory_format=CL) == channels_last
    assert rel_err(out, ref) < 1e-4
    grad = torch.randn_like(ref)
    params = [p for p in conv.parameters()]
    ours = torch.autograd.grad(out, [x, *params], grad)
    refs = torch.autograd.grad(ref, [x, *params], grad)
    for a, b in zip(ours, refs):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize('kernel_size', [3, 4])
@pytest.mark.parametrize('channels_last', [True, False])
def test_gradcheck_float64(kernel_size, channels_last):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(5, kernel_size).double()
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    x.requires_grad_()
    assert ran_kernel(conv(x))
    assert torch.autograd.gradcheck(conv, (x, ))


def test_frozen_weight_skips_its_gradient():
    conv = DepthwiseConv2d(8, 9).requires_grad_(False)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    out = conv(x)
    assert ran_kernel(out)
    out.square().sum().backward()
    assert conv.weight.grad is None
    ref = x.detach().requires_grad_()
    reference(conv, ref).square().sum().backward()
    assert rel_err(x.grad, ref.grad) < 1e-4


def test_bf16_autocast_uses_conv2d():
    torch.manual_seed(0)
    conv = DepthwiseConv2d(16, 9)
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=CL)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x)
        ref = reference(conv, x)
    assert out.dtype == torch.bfloat16
    assert not ran_kernel(out)
    assert torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert conv.weight.grad is not None


def build_pair(kernel_size):
    torch.manual_seed(0)
    ref = TimmConvMixer(16, 2, kernel_size, 2, num_classes=10)
    ours = ConvMixerMM(dict(TINY, kernel_size=kernel_size))
    state = {
        k.replace('blocks.', 'stages.'): v
        for k, v in ref.state_dict().items() if not k.startswith('head.')
    }
    ours.load_state_dict(state)
    return ours.to(memory_format=CL), ref.to(memory_format=CL)


@pytest.mark.parametrize('kernel_size', [8, 9])
def test_model_gradients_match_timm(kernel_size):
    ours, ref = build_pair(kernel_size)
    x = torch.randn(3, 3, 17, 15).contiguous(memory_format=CL)
    ours(x)[0].mean((2, 3)).square().sum().backward()
    ref.forward_head(ref.forward_features(x), pre_logits=True).square().sum(
    ).backward()
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        q = grads[name.replace('stages.', 'blocks.')]
        # atol: the biases before train-mode BN have zero true gradients.
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_switch_off_keeps_state_dict():
    torch.manual_seed(0)
    fast = ConvMixerMM(TINY)
    slow = ConvMixerMM(TINY, fast_dwconv=False)
    slow.load_state_dict(fast.state_dict())
    assert list(fast.state_dict()) == list(slow.state_dict())
    h = torch.randn(2, 16, 8, 8, requires_grad=True)
    assert ran_kernel(fast.stages[0][0].fn[0](h))
    assert not ran_kernel(slow.stages[0][0].fn[0](h))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    assert rel_err(fast(x)[0], slow(x)[0]) < 1e-4


def test_compiles_and_caches_with_log_lines(fresh_build, tmp_path):
    assert dwconv_module._library() is not None
    assert any('compiling the depthwise conv kernel' in line
               for line in fresh_build)
    built = list(tmp_path.glob('dwconv_*.so'))
    assert len(built) == 1
    if 'backend: OpenMP' in torch.__config__.parallel_info():
        # Linked to libgomp.so.1: torch's, already loaded, and its threads.
        assert b'libgomp.so.1' in built[0].read_bytes()
    fresh_build.clear()
    dwconv_module._library.cache_clear()
    assert dwconv_module._library() is not None
    assert fresh_build == []


def test_falls_back_without_compiler(fresh_build, tmp_path, monkeypatch):
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-cc'))
    conv = DepthwiseConv2d(8, 9)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    out = conv(x)
    assert any("using torch's depthwise conv" in line
               for line in fresh_build)
    assert not ran_kernel(out)
    assert torch.equal(out, reference(conv, x))
    out.sum().backward()
    assert conv.weight.grad is not None


def test_builds_without_openmp(fresh_build, tmp_path, monkeypatch):
    """A compiler that cannot link OpenMP still gives a working kernel, on
    threads of its own."""
    cc = tmp_path / 'cc-without-openmp'
    cc.write_text('#!/bin/sh\n'
                  'for a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\n'
                  'exec cc "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv('CC', str(cc))
    conv = DepthwiseConv2d(8, 5)
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=CL)
    out = conv(x)
    assert ran_kernel(out)
    assert rel_err(out, reference(conv, x)) < 1e-5
    built = list(tmp_path.glob('dwconv_*.so'))
    assert len(built) == 1 and b'libgomp' not in built[0].read_bytes()


def test_torch_compile_keeps_the_op_in_one_graph():
    # aot_eager traces like inductor (fake impl, autograd formula, one
    # graph) but keeps eager numerics; inductor's fused BN rounds
    # differently with or without this op.
    torch.manual_seed(0)
    model = ConvMixerMM(TINY).to(memory_format=CL)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    ref = model(x)[0]
    ref.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = torch.compile(model, fullgraph=True, backend='aot_eager')(x)[0]
    out.square().sum().backward()
    assert rel_err(out, ref) < 1e-4
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_keeps_cudnn():
    conv = DepthwiseConv2d(16, 9).cuda()
    x = torch.randn(2, 16, 9, 9, device='cuda', requires_grad=True)
    out = conv(x)
    assert not ran_kernel(out)
    assert torch.equal(out, reference(conv, x))


def test_flop_counter_counts_the_kernel():
    from torch.utils.flop_counter import FlopCounterMode
    conv = DepthwiseConv2d(16, 5)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = conv(x)
        out.sum().backward()
    assert ran_kernel(out)
    # forward, input and weight gradients: 2 FLOPs per multiply-add each.
    assert counter.get_total_flops() == 3 * 2 * (2 * 16 * 8 * 8) * 25
