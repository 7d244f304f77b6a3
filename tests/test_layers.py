# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The package's layers import only downward, and importing it stays
light (no command line, tooling or optional heavy dependency)."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from conftest import REPO

PACKAGE = Path(REPO) / 'convmixer_mm'
#: Each subpackage (or top-level module) and its layer: a module may import
#: from its own package and from lower layers only.
LAYERS = {
    'utils': 0, 'version': 0,
    'models': 1, 'datasets': 1,
    'engine': 2,
    'apis': 3,
    'cli': 4, 'devtools': 4,
}


def _imports(path: Path,
             root: Path = PACKAGE.parent) -> Iterator[Tuple[int, str]]:
    """``(line, imported convmixer_mm package)`` for each import."""
    parts = path.relative_to(root).with_suffix('').parts
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level]
                name = '.'.join(base + ((node.module, ) if node.module
                                        else ()))
            else:
                name = node.module or ''
            names = [name] if node.module or not node.level else [
                f'{name}.{alias.name}' for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            split = name.split('.')
            if split[0] == 'convmixer_mm' and len(split) > 1:
                yield node.lineno, split[1]


def test_layers_import_only_downward():
    wrong = []
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if own == '__init__':
            continue  # the package root re-exports the public API
        assert own in LAYERS, f'{rel}: add {own!r} to LAYERS'
        for line, target in _imports(path):
            if target != own and LAYERS.get(target, 99) >= LAYERS[own]:
                wrong.append(f'{rel}:{line} imports convmixer_mm.{target}')
    assert not wrong, '\n'.join(wrong)


def test_import_walk_sees_upward_imports(tmp_path):
    # The walk itself must catch a violation, relative or absolute.
    bad = tmp_path / 'convmixer_mm' / 'models' / 'probe.py'
    bad.parent.mkdir(parents=True)
    bad.write_text('from ..apis import load_model\n'
                   'from .. import devtools\n'
                   'import convmixer_mm.cli.launch\n')
    found = {target for _, target in _imports(bad, tmp_path)}
    assert found == {'apis', 'cli', 'devtools'}


@pytest.mark.slow
def test_import_is_light():
    code = (
        'import sys, convmixer_mm\n'
        'heavy = {"matplotlib", "onnx", "onnxruntime", "tensorboard", '
        '"timm"}\n'
        'print(sorted(m for m in sys.modules if m.split(".")[0] in heavy '
        'or m.startswith(("convmixer_mm.cli", "convmixer_mm.devtools"))))\n'
        'print(sum(len(open(m.__file__).readlines()) for n, m in '
        'list(sys.modules.items()) if n.split(".")[0] == "convmixer_mm"))\n')
    out = subprocess.run([sys.executable, '-c', code],
                         cwd=REPO,
                         capture_output=True,
                         text=True,
                         check=True).stdout.splitlines()
    assert out[0] == '[]'
    # The budget for what `import convmixer_mm` reads.
    assert int(out[1]) <= 3000
