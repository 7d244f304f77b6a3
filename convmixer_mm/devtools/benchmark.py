# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Side-by-side speed and memory benchmark of ConvMixer implementations.

Our ``ConvMixerMM``, mmpretrain's ``ConvMixer`` and timm's get one
architecture, identical weights and identical inputs. Candidates are timed
interleaved (round ``r`` starts at candidate ``r mod n``), after warm-up,
and reported as medians, so that load from other processes hits every
candidate alike. A GEMM of the model's 1x1-conv shape is timed in the same
loop: achieved GFLOP/s divided by its rate is the roofline fraction.
"""
import argparse
import contextlib
import ctypes
import functools
import gc
import importlib.util
import json
import os
import os.path as osp
import platform
import statistics
import time
from typing import Callable, Dict, Hashable, List, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..apis.complexity import count_complexity
from ..apis.converter import arch_from_config
from ..engine.checkpoint import from_mm_layout, load_weights
from ..models import ConvMixerMM, fuse_convmixer
from ..utils import atomic_save_bytes
from .benchmark_report import format_markdown, update_readme

IMPLS = ('ours', 'mmpretrain', 'timm')
FLAGS = ('cl', 'fuse', 'compile', 'cp')
DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)
#: The settings a report keeps (its ``settings``).
SETTINGS = ('arch', 'act', 'in_channels', 'num_classes', 'batch_size',
            'img_size', 'device', 'dtype', 'candidates', 'modes', 'warmup',
            'rounds', 'memory', 'profile', 'threads', 'seed')
Step = Callable[[], object]


class CandidateSpec(NamedTuple):
    """A parsed ``impl[+cl][+fuse][+compile][+cp][+dtype]`` (see
    ``--candidates``)."""
    impl: str
    flags: frozenset
    dtype: Optional[str]

    @classmethod
    def parse(cls, spec: str) -> 'CandidateSpec':
        impl, *flags = spec.split('+')
        if impl not in IMPLS:
            raise ValueError(
                f'Unknown implementation {impl!r} in candidate {spec!r}: '
                f'use one of {list(IMPLS)}.')
        unknown = sorted(set(flags) - set(FLAGS) - set(DTYPES))
        if unknown:
            raise ValueError(
                f'Unknown flags {unknown} in candidate {spec!r}: use any of '
                f'{["+" + f for f in FLAGS + tuple(DTYPES)]}.')
        dtypes = [f for f in flags if f in DTYPES]
        if len(dtypes) > 1:
            raise ValueError(f'{spec!r} names more than one dtype.')
        if impl != 'ours' and {'fuse', 'cp'} & set(flags):
            raise ValueError(
                f'{spec!r}: +fuse and +cp exist for "ours" only.')
        return cls(impl, frozenset(flags) - set(DTYPES),
                   dtypes[0] if dtypes else None)

    @property
    def name(self) -> str:
        """The spec with its flags in the canonical order."""
        flags = [f for f in FLAGS if f in self.flags]
        return '+'.join([self.impl, *flags, *[self.dtype] * bool(self.dtype)])


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The settings of a run (every name in :data:`SETTINGS`), or with
    ``--readme`` the README and the ``reports``."""
    parser = argparse.ArgumentParser(
        description='Time ConvMixer inference and training steps against '
        "mmpretrain's and timm's, interleaved, with identical weights.")
    add = parser.add_argument
    add('model', nargs='?', help='a convmixer_mm config file or an arch name '
        f'({", ".join(ConvMixerMM.arch_settings)})')
    add('--batch-size', type=int, default=8)
    add('--img-size', type=int, default=224)
    add('--device', choices=['cpu', 'cuda'], default='cpu')
    add('--dtype', choices=list(DTYPES), default='fp32',
        help='autocast dtype of every candidate that names none')
    add('--candidates', nargs='+',
        default=['ours+cl', 'mmpretrain', 'timm', 'mmpretrain+cl', 'timm+cl'],
        help='impl[+cl][+fuse][+compile][+cp][+bf16|+fp16]: impl ours, '
        'mmpretrain or timm (dropped when not installed); cl channels_last '
        'model and data; fuse fuse_convmixer (ours, inference); compile '
        'torch.compile; cp with_cp (ours); bf16/fp16 autocast')
    add('--mode', choices=['inference', 'train', 'both'], default='inference')
    add('--warmup', type=int, default=2)
    add('--rounds', type=int, default=10)
    add('--threads', type=int, help='torch threads')
    add('--no-memory', action='store_true', help='skip peak memory')
    add('--profile', action='store_true',
        help='also profile the first candidate (torch.profiler)')
    add('--out', help='write the JSON report here')
    add('--readme', metavar='README',
        help='instead of benchmarking, rewrite the "## Performance" section '
        'of README from the JSON reports given as the positional arguments')
    add('reports', nargs='*', help='JSON reports (--readme)')
    args = parser.parse_args(argv)
    if args.readme:
        args.reports[:0] = [args.model] * bool(args.model)
        return args
    if args.model is None:
        parser.error('give a config file or an arch name')
    args.arch, args.act, args.in_channels, args.num_classes = model_settings(
        args.model)
    if importlib.util.find_spec('timm') is None:
        args.candidates = [
            c for c in args.candidates if not c.startswith('timm')
        ]
    both = args.mode == 'both'
    args.modes = ['inference', 'train'] if both else [args.mode]
    args.memory, args.seed = not args.no_memory, 0
    return args


def model_settings(model: str) -> tuple:
    """``arch, act, in_channels, num_classes`` of an arch name or of the
    ConvMixer a config builds."""
    if not model.endswith('.py'):
        return ConvMixerMM.parse_arch(model), 'GELU', 3, 1000
    if not osp.isfile(model):
        raise ValueError(f'Config {model} does not exist.')
    arch, act = arch_from_config(model)
    return arch, act, arch.pop('in_channels'), arch.pop('num_classes', 1000)


def check(s: argparse.Namespace) -> None:
    """Raise a ``ValueError`` naming the first bad setting."""
    if s.device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device="cuda" but CUDA is not available: use '
                         '--device cpu.')
    for name in ('batch_size', 'img_size', 'rounds'):
        if getattr(s, name) <= 0:
            raise ValueError(f'{name} must be positive, got '
                             f'{getattr(s, name)}.')
    if s.img_size < s.arch['patch_size']:
        raise ValueError(f'img_size={s.img_size} is smaller than the patch '
                         f'size {s.arch["patch_size"]}.')
    specs = [CandidateSpec.parse(c) for c in s.candidates]
    if len({spec.name for spec in specs}) != len(specs):
        raise ValueError(f'Duplicate candidates in {s.candidates}.')
    if s.modes == ['train'] and all('fuse' in sp.flags for sp in specs):
        raise ValueError('+fuse candidates are inference-only: add '
                         'unfused candidates to time training.')


def build_model(s: argparse.Namespace, impl: str,
                with_cp: bool = False) -> nn.Module:
    """Our classifier, mmpretrain's built-in ConvMixer as in its own
    configs, or timm's, with the architecture of the settings ``s``."""
    arch, dims = s.arch, s.arch['embed_dims']
    if impl == 'timm':
        from timm.models.convmixer import ConvMixer
        return ConvMixer(
            dims, arch['depth'], arch['kernel_size'], arch['patch_size'],
            in_chans=s.in_channels, num_classes=s.num_classes,
            act_layer=getattr(nn, s.act))
    from mmpretrain.registry import MODELS
    ours = impl == 'ours'
    backbone = dict(
        type='ConvMixerMM' if ours else 'ConvMixer', arch=dict(arch),
        in_channels=s.in_channels, act_cfg=dict(type=s.act))
    if ours:
        backbone['with_cp'] = with_cp
    return MODELS.build(dict(
        type='ImageClassifier', backbone=backbone,
        neck=None if ours else dict(type='GlobalAveragePooling'),
        head=dict(type='ConvMixerClsHead' if ours else 'LinearClsHead',
                  num_classes=s.num_classes, in_channels=dims)))


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine terms, so that comparisons cover
    them (with the defaults BN is nearly the identity and folding or
    renaming mistakes would go unnoticed); returns the model in eval mode.
    The tests share it."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.normal_(1, 0.2, generator=gen)
            m.bias.normal_(0, 0.2, generator=gen)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def make_step(spec: CandidateSpec, s: argparse.Namespace, state: dict,
              mode: str, x: torch.Tensor, labels: torch.Tensor) -> Step:
    """A candidate given the weights ``state``: its inference on ``x``
    (returning the logits) or its training step (returning the loss)."""
    model = build_model(s, spec.impl, 'cp' in spec.flags)
    if spec.impl == 'timm':
        model.load_state_dict(from_mm_layout(state, 'timm'))
        call = model
    else:
        load_weights(model, state)
        call = functools.partial(model, mode='tensor')
    layout = (torch.channels_last
              if 'cl' in spec.flags else torch.contiguous_format)
    model.to(s.device, memory_format=layout).train(mode == 'train')
    x = x.contiguous(memory_format=layout)
    if 'fuse' in spec.flags:
        fuse_convmixer(model)
    if 'compile' in spec.flags:
        call = torch.compile(call)
    dtype = spec.dtype or s.dtype
    amp = (contextlib.nullcontext() if dtype == 'fp32' else
           torch.autocast(s.device, dtype=DTYPES[dtype]))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> torch.Tensor:
        with torch.set_grad_enabled(mode == 'train'), amp:
            out = call(x)
        if mode == 'inference':
            return out
        loss = F.cross_entropy(out.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def gemm_probes(s: argparse.Namespace, dtype_name: str) -> Dict[str, Step]:
    """The GEMM of the model's 1x1 conv, to time inside the same loop.

    Two libraries can run it: MKL through ``torch.mm`` and oneDNN through
    a 1x1 convolution with a pre-reordered weight (on CPU). The faster of
    the two medians is the reference rate.
    """
    dims, side = s.arch['embed_dims'], s.img_size // s.arch['patch_size']
    dtype = DTYPES[dtype_name]
    a = torch.randn(s.batch_size * side * side, dims, dtype=dtype)
    b = torch.randn(dims, dims, dtype=dtype)
    fns = {
        f'gemm:torch.mm:{dtype_name}':
        functools.partial(torch.mm, a.to(s.device), b.to(s.device))
    }
    if s.device == 'cpu' and dtype != torch.float16:
        x = a.view(s.batch_size, side, side, dims).permute(0, 3, 1, 2)
        w = torch.ops.mkldnn._reorder_convolution_weight(
            b.view(dims, dims, 1, 1), [0, 0], [1, 1], [1, 1], 1,
            list(x.shape))
        fns[f'gemm:onednn:{dtype_name}'] = functools.partial(
            torch.ops.mkldnn._convolution_pointwise, x, w, None, [0, 0],
            [1, 1], [1, 1], 1, 'none', [], '')
    return fns


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def interleaved_times(fns: Dict[Hashable, Step], warmup: int, rounds: int,
                      device: str, progress: Callable = lambda _: None
                      ) -> Dict[Hashable, List[float]]:
    """Seconds per call of each function, the order rotating every round;
    ``progress`` is told each round."""
    names = list(fns)
    for w in range(warmup):
        progress(f'  warm-up {w + 1}/{warmup}')
        for name in names:
            fns[name]()
    times: Dict[Hashable, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        progress(f'  round {r + 1}/{rounds}')
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f
                    if line.startswith(field + ':'))


def peak_memory(step: Step, device: str) -> int:
    """Peak memory growth of one call of ``step``, in bytes: of
    ``max_memory_allocated`` on CUDA, of the peak resident set on CPU.

    glibc keeps freed blocks of up to 32 MiB in its heap, which would hide
    the growth of a step that reuses them, so large blocks are forced to
    ``mmap`` (returned on free) for the step, and the peak RSS counter
    (``VmHWM``) is reset through ``/proc/self/clear_refs``.
    """
    gc.collect()
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not osp.exists('/proc/self/clear_refs'):
        raise RuntimeError('CPU peak memory needs Linux /proc and glibc: '
                           'pass --no-memory.')
    libc = ctypes.CDLL('libc.so.6')
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)
    try:
        libc.malloc_trim(0)
        base = _status_kib('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        step()
        return max(0, _status_kib('VmHWM') - base) * 1024
    finally:
        # Fixing a threshold turns glibc's adaptation off for good; these
        # are the values it adapts to once large tensors have been freed,
        # as in any warm PyTorch process, so later timings are unchanged.
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
        libc.mallopt(m_trim_threshold, 64 * 2**20)


def profile_ops(step: Step, iters: int = 2, top: int = 8) -> dict:
    """``total_ms`` of self CPU time per step and ``ops``: the costliest
    operators with their ``shapes``, ``calls`` and ``self_ms`` per step."""
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(
            activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(iters):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    ops = [
        dict(op=e.key, shapes=str([list(s) for s in e.input_shapes if s][:2]),
             calls=e.count // iters,
             self_ms=e.self_cpu_time_total / 1e3 / iters) for e in ranked
    ]
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / iters
    return dict(total_ms=total, ops=ops)


def machine_description(device: str) -> str:
    """A line naming the machine, for the table and the README."""
    if device == 'cuda':
        return torch.cuda.get_device_name()
    model, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key.strip() == 'model name':
                model = value.strip()
            elif key.strip() == 'flags':
                flags = value.split()
                break
    bf16 = [f for f in ('avx512_bf16', 'amx_bf16') if f in flags]
    return (f'{model}, {os.cpu_count()} logical CPUs, '
            f'{torch.get_num_threads()} threads, torch {torch.__version__}, '
            f'ISA {torch.backends.cpu.get_cpu_capability()}'
            f'{", " + "+".join(bf16) if bf16 else ""}')


def run_benchmark(s: argparse.Namespace,
                  progress: Callable = lambda _: None) -> dict:
    """Build every candidate, time them interleaved and return a report.

    ``progress`` (e.g. ``print``) is told each step as it starts. The
    report holds the ``settings``, the ``machine``, ``macs_per_image`` (as
    ``apis.complexity`` counts FLOPs) and ``results[mode]``: the GEMM rates
    (``gemm``, and ``gemm_best`` from the fastest rounds) and, per
    candidate, median seconds, img/s, GFLOP/s, its fraction of the GEMM
    rate in its dtype, peak memory and, for inference, the largest output
    difference from our fp32 contiguous eager model.
    """
    check(s)
    if s.threads:
        torch.set_num_threads(s.threads)
    specs = [CandidateSpec.parse(c) for c in s.candidates]
    torch.manual_seed(s.seed)
    reference = randomize_bn(build_model(s, 'ours'), s.seed)
    state = reference.state_dict()
    reference.backbone.fuse_eval = False  # the plain fp32 model
    image = (s.in_channels, s.img_size, s.img_size)
    macs = count_complexity(reference, image)['flops']
    gen = torch.Generator().manual_seed(s.seed)
    x = torch.randn(s.batch_size, *image, generator=gen).to(s.device)
    labels = torch.randint(
        s.num_classes, (s.batch_size, ), generator=gen).to(s.device)
    with torch.no_grad():
        ref_out = reference.to(s.device)(x, mode='tensor')
    del reference

    side = s.img_size // s.arch['patch_size']
    gemm_shape = [s.batch_size * side * side] + [s.arch['embed_dims']] * 2
    probes: Dict[str, Step] = {}
    for dtype in sorted({spec.dtype or s.dtype for spec in specs}):
        probes.update(gemm_probes(s, dtype))
    report = dict(
        settings={k: getattr(s, k) for k in SETTINGS},
        machine=machine_description(s.device),
        macs_per_image=macs,
        gemm_shape=gemm_shape,
        results={})
    for mode in s.modes:
        fns, diffs = {}, {}
        for spec in specs:
            if mode == 'train' and 'fuse' in spec.flags:
                continue  # fused models are inference-only
            progress(f'{mode}: building and checking {spec.name}')
            fns[spec] = make_step(spec, s, state, mode, x, labels)
            if mode == 'inference':
                diffs[spec] = (fns[spec]().float() - ref_out).abs().max()
        cands = list(fns)
        progress(f'{mode}: timing {", ".join(c.name for c in cands)} and '
                 'the GEMM probes')
        times = interleaved_times({**fns, **probes}, s.warmup, s.rounds,
                                  s.device, progress)
        gemm_gflop = 2 * gemm_shape[0] * gemm_shape[1] * gemm_shape[2] / 1e9
        result = report['results'][mode] = dict(
            gemm={n: gemm_gflop / statistics.median(times[n])
                  for n in probes},
            gemm_best={n: gemm_gflop / min(times[n]) for n in probes},
            candidates={})
        # A training step is a forward and a backward, the latter with
        # twice the forward's MACs (input and weight gradients).
        gflop = 2 * macs * (3 if mode == 'train' else 1) / 1e9
        for spec in cands:
            dtype = spec.dtype or s.dtype
            median = statistics.median(times[spec])
            ips = s.batch_size / median
            rates = [v for k, v in result['gemm'].items()
                     if k.endswith(':' + dtype)]
            row = result['candidates'][spec.name] = dict(
                dtype=dtype,
                median_s=median,
                times_s=times[spec],
                img_per_s=ips,
                best_img_per_s=s.batch_size / min(times[spec]),
                gflops=gflop * ips,
                gemm_fraction=gflop * ips / max(rates),
                max_abs_diff=diffs[spec].item() if spec in diffs else None)
            progress(f'{mode}: {spec.name}: {ips:.1f} img/s')
            if s.memory:
                progress(f'{mode}: {spec.name}: measuring peak memory')
                row['peak_mem_bytes'] = peak_memory(fns[spec], s.device)
        if s.profile:
            result['profile'] = dict(
                candidate=cands[0].name, **profile_ops(fns[cands[0]]))
    return report


def main(argv: Optional[List[str]] = None) -> None:
    """``tools/analysis_tools/benchmark.py``: benchmark, or with
    ``--readme`` rewrite the README's Performance section."""
    args = parse_args(argv)
    if args.readme:
        changed = update_readme(args.readme, args.reports)
        print(f'Updated the Performance section of {args.readme}.' if changed
              else f'The Performance section of {args.readme} is already '
              'up to date.')
        return
    report = run_benchmark(args, functools.partial(print, flush=True))
    print(f'{report["machine"]}\n\n{format_markdown(report)}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        atomic_save_bytes(args.out, json.dumps(report, indent=1))
        print(f'Wrote {args.out}')
