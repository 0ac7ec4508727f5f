"""Retries with exponential backoff and jitter for one upload step; only errors marked transient are retried."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 60.0


class TransientError(Exception):
    """A failure worth another try (dropped connection, 5xx, 429); `str()` never holds credentials."""


def with_retries(
    what: str,
    action: Callable[[], T],
    *,
    retries: int = 3,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `action`; on TransientError wait backoff * 2^k (equal jitter) and try again, `retries` times at most."""
    for attempt in range(retries + 1):
        try:
            return action()
        except TransientError as exc:
            if attempt == retries:
                raise
            ceiling = min(MAX_BACKOFF_S, backoff * 2**attempt)
            delay = random.uniform(ceiling / 2, ceiling)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, exc, attempt + 1, retries, delay)
            sleep(delay)
    raise AssertionError("unreachable")
