"""A circuit breaker per Space: after N consecutive failed calls it opens and calls fail fast
(to the fallbacks) until a single half-open probe succeeds.

A small state machine of its own (pybreaker has no asyncio support): its methods only read
the clock and take a lock, so it costs microseconds and works from threads and tasks alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"  # calls go through; failures are counted
    OPEN = "open"  # calls fail fast until reset_timeout_s has passed
    HALF_OPEN = "half_open"  # one probe call goes through; its outcome closes or re-opens


class CircuitBreaker:
    """Counts consecutive failures of one Space and decides whether a call may go to it.

    Args:
        name: The Space, for messages.
        failure_threshold: Consecutive failures that open the breaker.
        reset_timeout_s: Seconds it stays open before letting one probe through.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose timeout passed reads as half-open)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._timed_out():
                return BreakerState.HALF_OPEN
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return self._failures

    def _timed_out(self) -> bool:
        return self._clock() - self._opened_at >= self.reset_timeout_s

    def allow(self) -> bool:
        """Whether a call may go to the Space now; a True in the half-open state makes the
        caller the probe, which must report back with ``record_success``, ``record_failure``
        or ``release``."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if not self._timed_out():
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probing = False
            if self._probing:
                return False
            self._probing = True
            return True

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        """The call succeeded (or the Space answered that the input was wrong): close."""
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probing = False

    def record_failure(self) -> None:
        """The call failed: count it, and open after ``failure_threshold`` in a row (a failed
        probe re-opens at once)."""
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
            self._probing = False

    def release(self) -> None:
        """The probe was cancelled before it could tell: let another call probe."""
        with self._lock:
            self._probing = False

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value}, failures={self._failures})"
