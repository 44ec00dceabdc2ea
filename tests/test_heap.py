"""The worker's sweeper gives freed C memory back: what it relies on, shown with RSS.

A thread (as the sweeper is) allocates and frees 32 MiB in blocks glibc serves from that thread's
arena, keeping one block above the rest so the heap's top cannot shrink by itself. The freed
pages stay resident until :func:`release_free_memory` returns them.
"""
from __future__ import annotations

import os
import threading

import pytest

from driftwise_slack.heap import _malloc_trim, release_free_memory

MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(_malloc_trim() is None or not os.path.exists("/proc/self/statm"),
                                reason="needs glibc's malloc_trim and /proc")


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_a_thread_freed_leaves_the_process_once_released() -> None:
    kept: list[bytes] = []
    freed_rss: list[int] = []
    released: list[int] = []

    def work() -> None:
        # 64 KiB blocks: below glibc's mmap threshold, so they come from this thread's arena.
        blocks = [os.urandom(64 * 1024) for _ in range(512)]
        kept.append(os.urandom(64 * 1024))   # above the others: the heap top stays in use
        del blocks
        freed_rss.append(_rss())
        release_free_memory()
        released.append(_rss())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert freed_rss[0] - released[0] > 16 * MIB
