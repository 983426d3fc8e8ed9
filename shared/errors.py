"""Error types shared by every Space: one boundary turns them into user-facing errors."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; served as HTTP 422 or ``gr.Error`` with this message."""


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says what to do about it."""


class Overloaded(RuntimeError):
    """More work is queued than the Space takes; served as HTTP 429 with ``Retry-After``."""
