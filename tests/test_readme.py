# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Figures in the README stay true: they are generated, or checked here."""
import os.path as osp
import re
import shutil
import subprocess
import sys

from convmixer_mm.devtools.benchmark_report import update_readme

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = osp.join(ROOT, 'README.md')


def read_readme() -> str:
    with open(README, encoding='utf-8') as f:
        return f.read()


def test_performance_section_is_generated_from_its_reports(
        tmp_path, monkeypatch):
    # The section names the JSON reports it was written from; regenerating
    # it from them must change nothing, so no number in it is hand-edited
    # or left behind by a new report.
    text = read_readme()
    reports = sorted(set(re.findall(r'docs/benchmarks/[\w.-]+\.json', text)))
    assert reports
    copy = tmp_path / 'README.md'
    shutil.copyfile(README, copy)
    order = re.findall(
        r'docs/benchmarks/[\w.-]+\.json',
        re.search(r'--readme README\.md ([^`]+)`', text).group(1))
    assert sorted(order) == reports
    monkeypatch.chdir(ROOT)  # the section quotes the paths as given
    changed = update_readme(str(copy), order)
    assert not changed, (
        'README.md\'s Performance section differs from its reports: run '
        'the --readme command it ends with.')


def test_stated_test_count_is_true():
    # A stated number of tests must be the number pytest collects.
    stated = re.findall(r'\b(\d+) tests\b', read_readme())
    if not stated:
        return
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '--collect-only', '-q', 'tests',
         '-p', 'no:cacheprovider'],
        capture_output=True, text=True, cwd=ROOT)
    collected = re.search(r'(\d+) tests? collected', result.stdout)
    assert collected, result.stdout[-2000:]
    assert set(stated) == {collected.group(1)}


def test_stated_torch_version_outside_measurements_is_installed():
    # Outside the Performance section (a dated record of the machine it
    # was measured on), a named torch version must be the installed one.
    import torch
    text = read_readme()
    start = text.index('## Performance')
    end = text.find('\n## ', start + 1)
    rest = text[:start] + (text[end:] if end >= 0 else '')
    for version in re.findall(r'\btorch[ =]=?\s*(\d+\.\d+(?:\.\d+)?)', rest):
        assert torch.__version__.startswith(version), version
