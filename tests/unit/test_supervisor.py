"""The master's pure decisions: how many workers a configuration asks for."""

from __future__ import annotations

import os

import msgspec

from fastterm.config.model import Config
from fastterm.supervisor import worker_count


def _config(workers) -> Config:
    return msgspec.convert({"server": [], "workers": workers}, Config)


def test_worker_count_follows_the_workers_setting():
    n = (os.cpu_count() or 1) + 1   # never the CPU count, so "auto" cannot pass for it
    assert worker_count(_config(n)) == n
    assert worker_count(_config(1)) == 1
    assert worker_count(_config("auto")) == (os.cpu_count() or 1)
