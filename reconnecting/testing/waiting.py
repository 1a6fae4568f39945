"""Waiting for something that happens in another thread or process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_until"]


def wait_until(
    condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.005
) -> None:
    """Call *condition* every *interval* seconds until it returns a true value.

    :raises TimeoutError: naming *condition* (a lambda by its file and
        line), if it is still false after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name_of(condition)} still false after {timeout} s")
        time.sleep(interval)


def name_of(condition: Callable[[], Any]) -> str:
    name = getattr(condition, "__qualname__", None) or repr(condition)
    if (code := getattr(condition, "__code__", None)) is not None:
        name += f" ({code.co_filename}:{code.co_firstlineno})"
    return name
