# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The fused training-mode act + BatchNorm (+ residual) against the modules."""
import copy

import pytest
import torch
import torch.nn as nn
from conftest import TINY

from convmixer_mm.models import ConvMixerMM
from convmixer_mm.models.ops.act_bn import _forward, act_bn, applies

CL = torch.channels_last


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def make_bn(channels: int, seed: int, **kwargs) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, **kwargs)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.uniform_(-1, 1, generator=gen)
        bn.running_mean.uniform_(-1, 1, generator=gen)
        bn.running_var.uniform_(0.5, 2, generator=gen)
    return bn


def run(fn, x, residual, grad):
    x = x.detach().requires_grad_()
    residual = residual.detach().requires_grad_()
    out = fn(x, residual)
    out.backward(grad)
    return out, x.grad, residual.grad


@pytest.mark.parametrize('act', [nn.GELU(), nn.ReLU()])
@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize('shape', [(3, 37, 5, 7), (2, 16, 4, 4),
                                   (1, 70, 9, 3)])
@pytest.mark.parametrize('momentum', [0.1, None])
def test_matches_modules(act, with_residual, shape, momentum):
    torch.manual_seed(0)
    # A large mean against the spread checks the shifted variance.
    x = (torch.randn(shape) * 2 + 3).contiguous(memory_format=CL)
    residual = torch.randn(shape).contiguous(memory_format=CL)
    grad = torch.randn(shape)
    ours_bn = make_bn(shape[1], 1, momentum=momentum)
    ref_bn = copy.deepcopy(ours_bn)
    assert applies(x, act, ours_bn)

    def ours(x, r):
        return act_bn(x, act, ours_bn, r if with_residual else None)

    def ref(x, r):
        y = ref_bn(act(x))
        return y + r if with_residual else y

    for _ in range(2):  # the second step checks the running-stat update
        got = run(ours, x, residual, grad)
        want = run(ref, x, residual, grad)
    assert got[0].is_contiguous(memory_format=CL)
    for a, b in zip(got[:2], want[:2]):
        assert rel_err(a, b) < 1e-5
    if with_residual:
        assert torch.equal(got[2], want[2])
    for name in ('weight', 'bias'):
        assert rel_err(getattr(ours_bn, name).grad,
                       getattr(ref_bn, name).grad) < 1e-5, name
    for name in ('running_mean', 'running_var'):
        assert rel_err(getattr(ours_bn, name), getattr(ref_bn, name)) < 1e-6
    assert ours_bn.num_batches_tracked.item() == 2
    assert ref_bn.num_batches_tracked.item() == 2


@pytest.mark.parametrize('act', ['gelu', 'relu'])
def test_gradcheck_float64(act):
    """The op's backward formulas (input, residual, weight, bias)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 3, dtype=torch.float64).contiguous(
        memory_format=CL).requires_grad_()
    residual = torch.randn_like(x).requires_grad_()
    weight = torch.rand(5, dtype=torch.float64).add(0.5).requires_grad_()
    bias = torch.randn(5, dtype=torch.float64).requires_grad_()

    def fn(x, residual, weight, bias):
        return _forward(x, residual, weight, bias, 1e-5, act)[0]

    # The GELU kernel's erf is accurate to ~1e-7, not to float64.
    assert torch.autograd.gradcheck(
        fn, (x, residual, weight, bias),
        eps=1e-6,
        atol=1e-5 if act == 'gelu' else 1e-7,
        rtol=1e-4)


def test_same_result_for_any_thread_count():
    torch.manual_seed(0)
    x = torch.randn(4, 40, 12, 12).contiguous(memory_format=CL)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(act_bn(x, nn.GELU(), make_bn(40, 3)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize('case', [
    'contiguous', 'eval', 'tanh_gelu', 'sync_bn', 'no_affine', 'autocast'
])
def test_falls_back_to_the_modules(case):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    act, bn = nn.GELU(), make_bn(8, 4)
    if case == 'contiguous':
        x = x.contiguous()
    elif case == 'eval':
        bn.eval()
    elif case == 'tanh_gelu':
        act = nn.GELU(approximate='tanh')
    elif case == 'sync_bn':
        bn = nn.SyncBatchNorm(8)
    elif case == 'no_affine':
        bn = nn.BatchNorm2d(8, affine=False)
    calls = []
    bn.register_forward_hook(lambda *args: calls.append(1))
    with torch.autocast('cpu', dtype=torch.bfloat16,
                        enabled=case == 'autocast'):
        assert not applies(x, act, bn)
        if case != 'sync_bn':  # SyncBatchNorm needs a process group
            act_bn(x, act, bn)
            assert calls == [1]


def test_hooks_are_skipped_where_it_applies():
    bn = make_bn(8, 5)
    calls = []
    bn.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    act_bn(x, nn.ReLU(), bn)
    assert calls == []


@pytest.mark.parametrize('act', ['GELU', 'ReLU'])
@pytest.mark.parametrize('drop_path_rate', [0., 0.2])
@pytest.mark.parametrize('with_cp', [False, True])
def test_backbone_switch(act, drop_path_rate, with_cp):
    """fuse_train changes neither outputs, gradients, BN statistics nor the
    state dict."""
    torch.manual_seed(0)
    fused = ConvMixerMM(
        dict(TINY, embed_dims=24, depth=3, kernel_size=5),
        act_cfg=dict(type=act),
        drop_path_rate=drop_path_rate,
        with_cp=with_cp).train()
    plain = copy.deepcopy(fused)
    plain.fuse_train = False
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = torch.randn(3, 3, 24, 20).contiguous(memory_format=CL)
    # A random projection: the sum of squares of a BN output is nearly
    # constant, and its gradients would be rounding noise.
    proj = torch.randn(3, 24, 6, 5)
    results = []
    for model in (fused, plain):
        torch.manual_seed(1)  # the same drop-path masks
        out = model(x)[0]
        (out * proj).sum().backward()
        results.append(out)
    assert rel_err(*results) < 1e-5
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, name
    for (name, a), b in zip(fused.state_dict().items(),
                            plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5,
                              atol=1e-6), name


def test_frozen_stages_keep_their_statistics():
    torch.manual_seed(0)
    model = ConvMixerMM(TINY, frozen_stages=1).train()
    frozen = copy.deepcopy(model.stages[0].state_dict())
    model(torch.randn(2, 3, 16, 16).contiguous(memory_format=CL))
    for name, value in model.stages[0].state_dict().items():
        assert torch.equal(value, frozen[name]), name
    assert model.stages[1][3].num_batches_tracked.item() == 1
