# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Side-by-side speed and memory benchmark of ConvMixer implementations.

Our ``ConvMixerMM``, mmpretrain's built-in ``ConvMixer`` and timm's
``ConvMixer`` are built with one architecture, given identical weights and
fed identical inputs. Candidates are timed interleaved (round ``r`` starts
at candidate ``r mod n``), after warm-up, and reported as medians, so that
load from other processes hits every candidate alike. A GEMM of the model's
1x1-conv shape is timed in the same loop: achieved GFLOP/s divided by its
rate is the roofline fraction.

A candidate is named by a spec ``impl[+cl][+fuse][+compile][+cp][+dtype]``:
``impl`` is ``ours``, ``mmpretrain`` or ``timm``; ``cl`` runs model and data
channels_last; ``fuse`` applies :func:`convmixer_mm.models.fuse_convmixer`
(ours, inference only); ``compile`` wraps the model in ``torch.compile``;
``cp`` turns on gradient checkpointing (``with_cp``); ``bf16`` or ``fp16``
runs it under autocast instead of the run's default dtype.
"""
import contextlib
import ctypes
import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..apis.complexity import count_complexity
from ..engine.checkpoint import from_mm_layout, load_weights
from ..models import ConvMixerMM, fuse_convmixer

IMPLS = ('ours', 'mmpretrain', 'timm')
FLAGS = ('cl', 'fuse', 'compile', 'cp')
DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)
Progress = Callable[[str], object]


@dataclass(frozen=True)
class CandidateSpec:
    """One implementation with its fast-path switches."""
    impl: str
    channels_last: bool = False
    fuse: bool = False
    compile: bool = False
    with_cp: bool = False
    dtype: Optional[str] = None

    @classmethod
    def parse(cls, spec: str) -> 'CandidateSpec':
        """Parse ``impl[+cl][+fuse][+compile][+cp][+dtype]``."""
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
        if impl != 'ours' and ('fuse' in flags or 'cp' in flags):
            raise ValueError(
                f'{spec!r}: +fuse and +cp exist for "ours" only.')
        return cls(impl, *(f in flags for f in FLAGS),
                   dtypes[0] if dtypes else None)

    @property
    def name(self) -> str:
        on = (self.channels_last, self.fuse, self.compile, self.with_cp)
        flags = [f for f, f_on in zip(FLAGS, on) if f_on]
        return '+'.join([self.impl, *flags] + [self.dtype] * bool(self.dtype))


@dataclass
class BenchmarkSettings:
    """What to build and how to time it.

    Args:
        arch (dict): ``embed_dims``, ``depth``, ``patch_size`` and
            ``kernel_size``.
        act (str): ``'GELU'`` or ``'ReLU'``.
        in_channels (int): Image channels.
        num_classes (int): Classes of the linear head.
        batch_size (int): Images per batch.
        img_size (int): Height and width of the square input.
        device (str): ``'cpu'`` or ``'cuda'``.
        dtype (str): ``'fp32'``, ``'bf16'`` or ``'fp16'`` (autocast), for
            candidates that name none.
        candidates (list[str]): Candidate specs, see the module docstring.
        modes (list[str]): ``'inference'`` and/or ``'train'``.
        warmup (int): Untimed interleaved rounds first.
        rounds (int): Timed interleaved rounds.
        memory (bool): Also measure peak memory of one step.
        profile (bool): Also profile the first candidate with
            ``torch.profiler`` and keep its costliest operators.
        threads (int, optional): ``torch.set_num_threads``.
        seed (int): Seed of weights and inputs.
    """
    arch: Dict[str, int]
    act: str = 'GELU'
    in_channels: int = 3
    num_classes: int = 1000
    batch_size: int = 8
    img_size: int = 224
    device: str = 'cpu'
    dtype: str = 'fp32'
    candidates: List[str] = field(
        default_factory=lambda: ['ours+cl+fuse', 'mmpretrain', 'timm'])
    modes: List[str] = field(default_factory=lambda: ['inference'])
    warmup: int = 2
    rounds: int = 10
    memory: bool = True
    profile: bool = False
    threads: Optional[int] = None
    seed: int = 0

    def check(self) -> None:
        """Raise a ``ValueError`` naming the first bad setting."""
        ConvMixerMM.parse_arch(self.arch)
        choices = dict(
            dtype=list(DTYPES), device=['cpu', 'cuda'], act=['GELU', 'ReLU'])
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f'{name}={getattr(self, name)!r}: use one '
                                 f'of {valid}.')
        if self.device == 'cuda' and not torch.cuda.is_available():
            raise ValueError('device="cuda" but CUDA is not available: use '
                             '--device cpu.')
        if not self.modes or set(self.modes) - {'inference', 'train'}:
            raise ValueError(f'modes={self.modes}: use "inference" and/or '
                             '"train".')
        for name in ('batch_size', 'img_size', 'rounds', 'in_channels',
                     'num_classes'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be positive, got '
                                 f'{getattr(self, name)}.')
        if self.img_size < self.arch['patch_size']:
            raise ValueError(
                f'img_size={self.img_size} is smaller than the patch size '
                f'{self.arch["patch_size"]}.')
        specs = [CandidateSpec.parse(c) for c in self.candidates]
        if len({s.name for s in specs}) != len(specs):
            raise ValueError(f'Duplicate candidates in {self.candidates}.')
        if self.modes == ['train'] and all(s.fuse for s in specs):
            raise ValueError('+fuse candidates are inference-only: add '
                             'unfused candidates to time training.')


def settings_from_config(path: str, **kwargs) -> BenchmarkSettings:
    """Benchmark settings for the model of an mmpretrain config.

    Args:
        path (str): A config whose model has a ``ConvMixerMM`` backbone.
        **kwargs: Other fields of :class:`BenchmarkSettings`.
    """
    from mmengine.config import Config

    from ..apis.converter import arch_from_config
    cfg = Config.fromfile(path)
    kind = cfg.model.get('backbone', {}).get('type')
    if kind != 'ConvMixerMM':
        raise ValueError(
            f'{path} does not build a ConvMixerMM backbone (got {kind!r}): '
            'pass a convmixer_mm config or an arch name.')
    arch, act = arch_from_config(cfg)
    return BenchmarkSettings(
        act=act,
        in_channels=arch.pop('in_channels'),
        num_classes=arch.pop('num_classes'),
        arch=arch,
        **kwargs)


def build_model(settings: BenchmarkSettings,
                impl: str,
                with_cp: bool = False) -> nn.Module:
    """Our classifier, mmpretrain's built-in ConvMixer as in its own
    configs, or timm's, with the architecture of ``settings``."""
    arch, dims = settings.arch, settings.arch['embed_dims']
    if impl == 'timm':
        from timm.models.convmixer import ConvMixer
        return ConvMixer(
            dims, arch['depth'], arch['kernel_size'], arch['patch_size'],
            in_chans=settings.in_channels, num_classes=settings.num_classes,
            act_layer=getattr(nn, settings.act))
    from mmpretrain.registry import MODELS
    ours = impl == 'ours'
    backbone = dict(
        type='ConvMixerMM' if ours else 'ConvMixer', arch=dict(arch),
        in_channels=settings.in_channels, act_cfg=dict(type=settings.act))
    if ours:
        backbone['with_cp'] = with_cp
    return MODELS.build(dict(
        type='ImageClassifier', backbone=backbone,
        neck=None if ours else dict(type='GlobalAveragePooling'),
        head=dict(type='ConvMixerClsHead' if ours else 'LinearClsHead',
                  num_classes=settings.num_classes, in_channels=dims)))


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


class Candidate:
    """A built, weight-synchronised model with its step functions."""

    def __init__(self, spec: CandidateSpec, settings: BenchmarkSettings,
                 state: Dict[str, torch.Tensor], mode: str) -> None:
        self.spec = spec
        self.dtype = spec.dtype or settings.dtype
        self.device = settings.device
        model = build_model(settings, spec.impl, spec.with_cp)
        if spec.impl == 'timm':
            model.load_state_dict(from_mm_layout(state, 'timm'))
            self.call = model
        else:
            load_weights(model, state)
            self.call = lambda x: model(x, mode='tensor')
        model.to(settings.device).train(mode == 'train')
        if spec.channels_last:
            model.to(memory_format=torch.channels_last)
        if spec.fuse:
            fuse_convmixer(model)
        if spec.compile:
            self.call = torch.compile(self.call)
        if mode == 'train':
            self.optimizer = torch.optim.SGD(
                model.parameters(), lr=1e-3, momentum=0.9)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Lay the input out the way this candidate wants it."""
        return x.contiguous(memory_format=torch.channels_last
                            if self.spec.channels_last else
                            torch.contiguous_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == 'fp32':
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=DTYPES[self.dtype])

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return self.call(x)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            loss = F.cross_entropy(self.call(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class GemmProbe:
    """The GEMM of the model's 1x1 conv, timed inside the same loop.

    Two libraries can run it: MKL through ``torch.mm`` and oneDNN through
    a 1x1 convolution with a pre-reordered weight (on CPU). The faster of
    the two medians is the reference rate.
    """

    def __init__(self, settings: BenchmarkSettings, dtype_name: str) -> None:
        dims = settings.arch['embed_dims']
        side = settings.img_size // settings.arch['patch_size']
        rows = settings.batch_size * side * side
        dtype, device = DTYPES[dtype_name], settings.device
        self.flops = 2 * rows * dims * dims
        self.a = torch.randn(rows, dims, device=device, dtype=dtype)
        self.b = torch.randn(dims, dims, device=device, dtype=dtype)
        self.fns = {
            f'gemm:torch.mm:{dtype_name}': lambda: torch.mm(self.a, self.b)
        }
        if device == 'cpu' and dtype != torch.float16:
            x = torch.randn(
                settings.batch_size, dims, side, side, dtype=dtype).contiguous(
                    memory_format=torch.channels_last)
            w = torch.ops.mkldnn._reorder_convolution_weight(
                self.b.view(dims, dims, 1, 1), [0, 0], [1, 1], [1, 1], 1,
                list(x.shape))
            self.fns[f'gemm:onednn:{dtype_name}'] = (
                lambda: torch.ops.mkldnn._convolution_pointwise(
                    x, w, None, [0, 0], [1, 1], [1, 1], 1, 'none', [], ''))


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def interleaved_times(fns: Dict[str, Callable[[], object]],
                      warmup: int,
                      rounds: int,
                      device: str,
                      progress: Progress = lambda _: None
                      ) -> Dict[str, List[float]]:
    """Seconds per call of each function, the order rotating every round;
    ``progress`` is told each round."""
    names = list(fns)
    for w in range(warmup):
        progress(f'  warm-up {w + 1}/{warmup}')
        for name in names:
            fns[name]()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in names}
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


def _rss_kib(field_name: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field_name + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field_name} missing from /proc/self/status.')


@contextlib.contextmanager
def _cpu_peak_tracking() -> Iterator[Callable[[], int]]:
    """Yield a function returning peak RSS growth in bytes so far.

    glibc keeps freed blocks of up to 32 MiB in its heap, which would hide
    the growth of a step that reuses them, so large blocks are forced to
    ``mmap`` (returned on free) while tracking, and the peak RSS counter
    (``VmHWM``) is reset through ``/proc/self/clear_refs``.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        libc = None
    if libc is None or not os.path.exists('/proc/self/clear_refs'):
        raise RuntimeError('CPU peak memory needs Linux /proc and glibc: '
                           'pass --no-memory.')
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)
    try:
        gc.collect()
        libc.malloc_trim(0)
        base = _rss_kib('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        yield lambda: max(0, _rss_kib('VmHWM') - base) * 1024
    finally:
        # Fixing a threshold turns glibc's adaptation off for good; these
        # are the values it adapts to once large tensors have been freed,
        # as in any warm PyTorch process, so later timings are unchanged.
        libc.mallopt(m_mmap_threshold, 32 * 2**20)
        libc.mallopt(m_trim_threshold, 64 * 2**20)


def peak_memory(step: Callable[[], object], device: str) -> int:
    """Peak memory growth of one call of ``step``, in bytes.

    CUDA: growth of ``max_memory_allocated``. CPU: growth of the peak
    resident set size.
    """
    if device == 'cuda':
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with _cpu_peak_tracking() as peak:
        step()
        return peak()


def profile_ops(step: Callable[[], object], iters: int = 2,
                top: int = 8) -> dict:
    """Self time per call of the costliest operators of ``step``.

    Returns:
        dict: ``total_ms`` per step and ``ops``, a list of ``op``,
        ``shapes``, ``calls`` and ``self_ms`` per step.
    """
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(
            activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(iters):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return dict(
        total_ms=sum(e.self_cpu_time_total for e in events) / 1e3 / iters,
        ops=[
            dict(
                op=e.key,
                shapes=str([list(s) for s in e.input_shapes if s][:2]),
                calls=e.count // iters,
                self_ms=e.self_cpu_time_total / 1e3 / iters) for e in ranked
        ])


def machine_description(device: str) -> str:
    """A line naming the machine, for the table and the README."""
    if device == 'cuda':
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    flags: List[str] = []
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


def run_benchmark(settings: BenchmarkSettings,
                  progress: Progress = lambda _: None) -> dict:
    """Build every candidate, time them interleaved and return a report.

    ``progress`` (e.g. ``print``) is told each step as it starts: each
    candidate as it is built and measured, each timing round.

    Returns:
        dict: JSON-serialisable ``settings``, ``machine``,
        ``macs_per_image`` (counted as ``apis.complexity`` counts FLOPs)
        and ``results[mode]`` with the GEMM rates (``gemm``, and
        ``gemm_best`` from the fastest rounds) and, per candidate
        (``candidates``), median seconds, img/s, GFLOP/s, its fraction of
        the GEMM rate in its dtype, peak memory and, for inference, the
        largest output difference from our fp32 contiguous eager model.
    """
    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    specs = [CandidateSpec.parse(c) for c in settings.candidates]
    torch.manual_seed(settings.seed)
    reference = randomize_bn(build_model(settings, 'ours'), settings.seed)
    state = reference.state_dict()
    reference.backbone.fuse_eval = False  # the plain fp32 model
    image = (settings.in_channels, settings.img_size, settings.img_size)
    macs = count_complexity(reference, image)['flops']
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(settings.batch_size, *image, generator=gen)
    labels = torch.randint(settings.num_classes, (settings.batch_size, ),
                           generator=gen).to(settings.device)
    x = x.to(settings.device)
    with torch.no_grad():
        ref_out = reference.to(settings.device)(x, mode='tensor')
    del reference

    dtypes = sorted({s.dtype or settings.dtype for s in specs})
    probes = {d: GemmProbe(settings, d) for d in dtypes}
    report = dict(
        settings=dict(settings.__dict__),
        machine=machine_description(settings.device),
        macs_per_image=macs,
        gemm_shape=list(probes[dtypes[0]].a.shape) +
        [settings.arch['embed_dims']],
        results={})
    for mode in settings.modes:
        # Fused models are inference-only.
        cands = {
            s.name: Candidate(s, settings, state, mode)
            for s in specs if mode == 'inference' or not s.fuse
        }
        fns, diffs = {}, {}
        for name, c in cands.items():
            progress(f'{mode}: building and checking {name}')
            inp = c.prepare(x)
            if mode == 'inference':
                fns[name] = lambda c=c, i=inp: c.infer(i)
                diffs[name] = (c.infer(inp).float() -
                               ref_out).abs().max().item()
            else:
                fns[name] = lambda c=c, i=inp: c.train_step(i, labels)
        gemm_flops = {n: p.flops for p in probes.values() for n in p.fns}
        for probe in probes.values():
            fns.update(probe.fns)
        progress(f'{mode}: timing {", ".join(cands)} and the GEMM probes')
        times = interleaved_times(fns, settings.warmup, settings.rounds,
                                  settings.device, progress)
        result = dict(
            gemm={
                n: f / statistics.median(times[n]) / 1e9
                for n, f in gemm_flops.items()
            },
            gemm_best={
                n: f / min(times[n]) / 1e9
                for n, f in gemm_flops.items()
            },
            candidates={})
        # A training step is a forward and a backward, the latter with
        # twice the forward's MACs (input and weight gradients).
        flops_per_image = 2 * macs * (3 if mode == 'train' else 1)
        for name, c in cands.items():
            median = statistics.median(times[name])
            ips = settings.batch_size / median
            gflops = flops_per_image * ips / 1e9
            best_gemm = max(v for k, v in result['gemm'].items()
                            if k.endswith(':' + c.dtype))
            row = result['candidates'][name] = dict(
                dtype=c.dtype,
                median_s=median,
                times_s=times[name],
                img_per_s=ips,
                best_img_per_s=settings.batch_size / min(times[name]),
                gflops=gflops,
                gemm_fraction=gflops / best_gemm,
                max_abs_diff=diffs.get(name))
            progress(f'{mode}: {name}: {ips:.1f} img/s')
            if settings.memory:
                progress(f'{mode}: {name}: measuring peak memory')
                row['peak_mem_bytes'] = peak_memory(fns[name],
                                                    settings.device)
        if settings.profile:
            first = next(iter(cands))
            result['profile'] = dict(
                candidate=first, **profile_ops(fns[first]))
        report['results'][mode] = result
        del cands, fns
    return report


def _cells(row: dict, base: dict) -> List[str]:
    mem, diff = row.get('peak_mem_bytes'), row['max_abs_diff']
    return [
        f'{row["img_per_s"]:.2f}',
        f'{row["img_per_s"] / base["img_per_s"]:.2f}x',
        f'{row["best_img_per_s"]:.2f}', f'{row["gflops"]:.1f}',
        f'{row["gemm_fraction"]:.0%}',
        f'{mem / 2**20:.0f}' if mem is not None else '-',
        f'{diff:.1e}' if diff is not None else '-'
    ]


def format_markdown(report: dict) -> str:
    """Markdown tables of a report, one per mode (and its profile)."""
    s = report['settings']
    arch = s['arch']
    title = (f'ConvMixer-{arch["embed_dims"]}/{arch["depth"]} (patch '
             f'{arch["patch_size"]}, kernel {arch["kernel_size"]}), '
             f'{s["img_size"]} px, batch {s["batch_size"]}, {s["device"]}')
    out = []
    for mode, result in report['results'].items():
        rows = result['candidates']
        first = next(iter(rows))
        gemm = ', '.join(f'{k.split(":", 1)[1]} {v:.0f}'
                         for k, v in result['gemm'].items())
        out += [
            f'{title}, **{mode}**; GEMM {gemm} GFLOP/s; medians of '
            f'{s["rounds"]} interleaved rounds.', '',
            f'| candidate | img/s | vs `{first}` | best img/s | GFLOP/s | '
            'of GEMM | peak MiB | max abs diff |',
            '|---|---:|---:|---:|---:|---:|---:|---:|'
        ]
        out += [
            '| ' + ' | '.join([f'`{name}`'] + _cells(row, rows[first])) +
            ' |' for name, row in rows.items()
        ]
        out.append('')
        prof = result.get('profile')
        if prof:
            total = prof['total_ms']
            out += [
                f'Profile of `{prof["candidate"]}` (torch.profiler, self '
                f'CPU time per step, {total:.0f} ms in all):', '',
                '| operator | input shapes | calls | ms | share |',
                '|---|---|---:|---:|---:|'
            ]
            out += [
                f'| `{op["op"]}` | {op["shapes"]} | {op["calls"]} | '
                f'{op["self_ms"]:.1f} | {op["self_ms"] / total:.0%} |'
                for op in prof['ops']
            ]
            out.append('')
    return '\n'.join(out)
