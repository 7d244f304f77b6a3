# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Per-epoch training curves from mmengine's ``vis_data/scalars.json``."""
import json
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

Curve = Tuple[List[int], List[float]]
DEFAULT_KEYS = ('loss', 'lr', 'accuracy/top1')


def find_scalars(path: str) -> str:
    """The ``scalars.json`` of a work dir (its newest run that has one:
    mmengine writes ``WORK_DIR/<timestamp>/vis_data/scalars.json``), of a
    run dir, or the file itself."""
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise FileNotFoundError(
            f'{path!r} does not exist: pass the work dir of a training run '
            '(e.g. work_dirs/<config name>) or its scalars.json.')
    for run in [''] + sorted(os.listdir(path), reverse=True):
        scalars = osp.join(path, run, 'vis_data', 'scalars.json')
        if osp.isfile(scalars):
            return scalars
    raise FileNotFoundError(
        f'No vis_data/scalars.json under {path!r}: it is written by '
        "mmengine's LocalVisBackend once training has logged (keep "
        "dict(type='LocalVisBackend') in visualizer.vis_backends).")


def load_scalars(path: str) -> List[dict]:
    """The records of a ``scalars.json`` (one JSON object per line)."""
    scalars = find_scalars(path)
    records = []
    with open(scalars) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f'{scalars}:{number} is not JSON ({e}): is '
                                 'it an mmengine scalars.json?') from None
    if not records:
        raise ValueError(f'{scalars} is empty: training logged nothing yet.')
    return records


def epoch_curves(records: Sequence[dict],
                 keys: Sequence[str] = DEFAULT_KEYS) -> Dict[str, Curve]:
    """``key -> (epochs, values)`` of logged scalars.

    Training records carry an ``epoch`` and are averaged over it (the
    logger writes one every ``interval`` iterations); validation records
    carry the epoch as ``step`` (epoch-based loops) and are taken as is.
    """
    available = sorted({k for r in records for k in r} -
                       {'epoch', 'iter', 'step'})
    missing = [k for k in keys if k not in available]
    if missing:
        raise ValueError(f'{missing} not logged: choose from {available}.')
    curves = {}
    for key in keys:
        per_epoch: Dict[int, List[float]] = defaultdict(list)
        for record in records:
            if key in record:
                epoch = record.get('epoch', record['step'])
                per_epoch[int(epoch)].append(float(record[key]))
        epochs = sorted(per_epoch)
        curves[key] = (epochs,
                       [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs])
    return curves


def plot_curves(runs: Mapping[str, Mapping[str, Curve]],
                out_file: str,
                title: Optional[str] = None) -> None:
    """One panel per scalar and one line per run (``label ->
    epoch_curves(...)``, all with the same keys), as a PNG or PDF."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = osp.dirname(osp.abspath(out_file))
    if not osp.isdir(out_dir):
        raise FileNotFoundError(
            f'Directory {out_dir!r} of {out_file!r} does not exist.')
    keys = list(next(iter(runs.values())))
    legend = len(runs) > 1
    fig, axes = plt.subplots(
        1, len(keys), figsize=(3.6 * len(keys), 3 + 0.2 * len(runs) * legend),
        squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, curves in runs.items():
            ax.plot(*curves[key], marker='o', markersize=3, label=label)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        split = 'val' if key.startswith('accuracy') else 'train'
        ax.set_title(f'{split} {key}')
        ax.grid(alpha=0.3)
        if key == 'lr':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
    if legend:
        fig.legend(*axes[0][0].get_legend_handles_labels(),
                   loc='lower center', ncol=1, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.065 * len(runs) * legend, 1, 1))
    fig.savefig(out_file, dpi=80)
    plt.close(fig)
