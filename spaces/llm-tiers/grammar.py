"""Constrained decoding: compile JSON schemas and regexes into xgrammar grammars for one model.

The constraint is xgrammar's (a maintained grammar engine used by vLLM, SGLang and TGI-alike
servers); this module only caches compiled grammars per model and turns compile failures into
``InputError`` so a bad schema is a 422, not a 500.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

import torch

from engine import Constraint
from shared.errors import InputError

logger = logging.getLogger(__name__)


class GrammarCache:
    """Compiles and caches grammars for one tokenizer.

    Args:
        tokenizer: The model's Hugging Face tokenizer.
        vocab_size: The model's logits width (may exceed the tokenizer's size).
        capacity: Compiled grammars kept (least recently used dropped first).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, capacity: int = 64) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: OrderedDict[str, Constraint] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        # JSON written without free whitespace never holds a raw control character, but
        # xgrammar 0.2's string rule with maxLength lets them through (they make json.loads
        # fail), so JSON grammars also mask every token holding a byte below 0x20.
        control = [i for i, piece in enumerate(info.decoded_vocab) if any(b < 0x20 for b in piece)]
        self._control_ids = torch.tensor(control, dtype=torch.long) if control else None

    def json_schema(self, schema: dict[str, Any] | bool) -> Constraint:
        """A constraint for JSON that validates against ``schema``.

        Raises:
            InputError: when the schema is not one xgrammar can compile.
        """
        if not isinstance(schema, dict):
            raise InputError("Grammar is not valid: the JSON schema must be an object")
        text = json.dumps(schema)  # property order is generation order: keep it
        return self._get(
            f"schema:{text}", lambda c: c.compile_json_schema(text, any_whitespace=False)
        )

    def any_json(self) -> Constraint:
        """A constraint for any JSON object (OpenAI's ``{"type": "json_object"}``)."""
        schema_text = json.dumps({"type": "object"})
        return self._get(
            "json_object", lambda c: c.compile_json_schema(schema_text, any_whitespace=False)
        )

    def regex(self, pattern: str) -> Constraint:
        """A constraint for text matching ``pattern`` (TGI's ``{"type": "regex"}``)."""
        return self._get(f"regex:{pattern}", lambda c: c.compile_regex(pattern), json_like=False)

    def _get(self, key: str, compile_fn: Any, *, json_like: bool = True) -> Constraint:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            compiled = compile_fn(self._compiler)
        except (RuntimeError, ValueError, TypeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # xgrammar prefixes messages with a timestamp and source location; keep the reason.
            reason = reason.split(": ", 1)[-1] if ".cc:" in reason else reason
            raise InputError(f"Grammar is not valid: {reason}") from e
        constraint = Constraint(compiled, self._control_ids if json_like else None)
        with self._lock:
            self._cache[key] = constraint
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return constraint
