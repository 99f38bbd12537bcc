"""``data.num_workers`` left out of a recipe: 4, or the CPU cores this process may use."""

import os

import pytest

from kdforge.config import load_config

STUDENT = ["student.name=resnet8"]


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 2), (4, 4), (16, 4)])
def test_the_default_is_at_most_the_usable_cores(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's; affinity may allow fewer
    assert load_config(None, STUDENT).data.num_workers == workers


def test_without_affinity_the_cpu_count_caps_it(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # e.g. macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert load_config(None, STUDENT).data.num_workers == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undetermined
    assert load_config(None, STUDENT).data.num_workers == 1


def test_a_recipe_value_is_kept(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert load_config(None, [*STUDENT, "data.num_workers=8"]).data.num_workers == 8
