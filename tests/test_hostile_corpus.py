"""The hostile-input corpus (issue 13) through the command line: one parametrised test
over the table in tests/hostile_corpus.py (slides, annotations, model files, output
folders, numbers, a concurrent run, folders left by kills), each case built in its own
scratch folder. Cases run in-process through `cli.main` (about 0.1 s each); those marked
`subprocess` run again as a real process, so the console entry point, a lock held by
another process and the interpreter's own output are covered too.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

import hostile_corpus as corpus

IN_PROCESS = corpus.CASES
REAL = [c for c in corpus.CASES if c.subprocess]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return corpus.make_world(tmp_path_factory.mktemp("world"))


def _check(outcome: corpus.Outcome) -> None:
    assert not outcome.problems, "\n".join([*outcome.problems, outcome.stderr[-2000:]])


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.id for c in IN_PROCESS])
def test_hostile_input(world, tmp_path, case):
    _check(corpus.run_case(case, world, tmp_path / "case"))


@pytest.mark.parametrize("case", REAL, ids=[c.id for c in REAL])
def test_hostile_input_in_a_real_process(world, tmp_path, case):
    _check(corpus.run_case(case, world, tmp_path / "case", real_process=True))


def test_corpus_covers_every_kind_the_issue_lists():
    groups = Counter(c.group for c in corpus.CASES)
    assert set(groups) == {"slides", "annotations", "models", "out", "numbers"}
    ids = " ".join(c.id for c in corpus.CASES)
    for kind in ("truncated", "zero-bytes", "renamed", "width-0", "float32", "uint16",
                 "greyscale", "huge-declared", "huge-coordinates", "nan-coordinates",
                 "deep-nesting", "entity-expansion", "200k-features", "pickle",
                 "wrong-shapes", "wrong-task", "config-", "nan-weights", "locked-by-another",
                 "killed-after-commit", "killed-before-commit", "number:"):
        assert kind in ids, kind
    assert len(corpus.CASES) >= 100
