"""Batched text generation with causal LMs: a decode loop, constrained decoding, a model registry.

For any Space that generates text (llm-tiers) or scores next tokens. Nothing here knows about
HTTP, Gradio or a Space's configuration; the Space passes every value in.

- :class:`BatchEngine`: one decode loop per loaded model, shared by every request on it. A
  background thread admits queued requests, prefills the new ones together in one left-padded
  forward pass, then merges them into the running left-padded batch whose KV cache grows by one
  column per decode step. Finished and cancelled rows are dropped between steps and the
  all-padding columns trimmed, the way TGI's ``CausalLMBatch.concatenate`` / ``filter`` works
  for models without paged attention. Token choice is per row, so every request keeps its own
  sampling parameters, seed, stop sequences and grammar inside a shared forward pass. Results
  come back through a :class:`TokenStream`, which a thread iterates (``for``) and an asyncio task
  iterates (``async for``); cancelling it (a client that went away) drops the row at the next
  step.
- :class:`GrammarCache`: JSON schemas and regexes compiled into xgrammar grammars for one
  tokenizer. A grammar request always ends in text that matches: when its remaining token budget
  is just enough to finish the structure, the engine emits the shortest completion
  :class:`GrammarCloser` finds (TGI leaves an unterminated string there).
- :class:`CausalLMRegistry`: loads a causal LM by Hub id or local folder (``shared.models``),
  merges a PEFT adapter into its own copy, shares one loaded model (and engine) between callers
  asking for the same :class:`ModelSpec`, and keeps the weights under a memory budget by
  unloading idle models, least recently used first.
- :func:`next_token_logprobs`: log-probabilities of the next token after each of several
  prompts, in one forward pass (scoring and classification with an LLM).

Why not ``transformers``' continuous batching manager: it applies one generation config to the
whole batch (no per-request seed, grammar or stop strings) and its paged attention targets GPUs;
``benchmarks/llm_tiers`` measures it for comparison.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from shared.errors import InputError, ModelLoadError
from shared.models import TRANSFORMERS_WEIGHTS, ModelSource, demo_info, resolve_model, select_device
from shared.packed import pack_linears

__all__ = [
    "BatchEngine",
    "CausalLMRegistry",
    "Constraint",
    "Dtype",
    "EngineLimits",
    "EngineOverloaded",
    "EngineStats",
    "FinishReason",
    "GenerationCancelled",
    "GenerationFailed",
    "GenerationRequest",
    "GenerationResult",
    "GrammarCache",
    "GrammarCloser",
    "IncrementalDetokenizer",
    "LoadedModel",
    "ModelSpec",
    "PromptPrefix",
    "SamplingOptions",
    "TokenEvent",
    "TokenStream",
    "encode_prefix",
    "next_token_logprobs",
]

logger = logging.getLogger(__name__)

FinishReason = Literal["length", "eos_token", "stop_sequence"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


#: The logprob reported for a token whose probability is 0 (the most negative float32).
LOWEST_LOGPROB = -3.4028234663852886e38


class EngineOverloaded(RuntimeError):
    """Too many requests in flight for this model (TGI answers 429)."""


class GenerationFailed(RuntimeError):
    """Generation broke mid-way (e.g. out of memory) or the model was unloaded (TGI: 424)."""


class GenerationCancelled(RuntimeError):
    """The request was cancelled (its client disconnected) before it finished."""


# ---- options and results ------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is chosen; ``None`` leaves a knob off."""

    # Sample from the distribution; False means greedy (argmax).
    do_sample: bool = False
    # Softmax temperature (> 0), only used when sampling.
    temperature: float | None = None
    # Keep the k most likely tokens before sampling.
    top_k: int | None = None
    # Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p.
    top_p: float | None = None
    # Locally typical sampling mass.
    typical_p: float | None = None
    # CTRL-style penalty (> 1 discourages tokens already in the prompt or output).
    repetition_penalty: float | None = None
    # OpenAI-style penalty proportional to how often a token was generated, in [-2, 2].
    frequency_penalty: float | None = None
    # Random seed of this request's generator; the engine picks one when None and sampling.
    seed: int | None = None


@dataclass(frozen=True)
class Constraint:
    """A compiled grammar, tokens it must never produce, and how to finish it early."""

    # An ``xgrammar.CompiledGrammar`` compiled for this model's tokenizer.
    compiled: Any
    # Token ids masked out on top of the grammar (None for none).
    banned_ids: torch.Tensor | None = None
    # Finds short completions from a matcher's state (None: never force a completion).
    closer: GrammarCloser | None = None
    # The grammar is JSON (the closer then tracks nesting to prefer closing text).
    json_like: bool = False
    # The shortest complete output the closer found from the start, as token ids (None: none
    # found, so the request is neither refused for a small budget nor forced to finish).
    shortest: tuple[int, ...] | None = None

    @property
    def min_new_tokens(self) -> int | None:
        """Fewest new tokens with which the engine can guarantee a complete match."""
        return None if self.shortest is None else len(self.shortest)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete."""

    # Prompt token ids, special tokens included.
    input_ids: tuple[int, ...]
    # Most tokens to generate.
    max_new_tokens: int
    # Token choice.
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    # Strings that end generation; the output keeps the stop string (as TGI does).
    stop: tuple[str, ...] = ()
    # A grammar the output must follow (see :class:`GrammarCache`), or None.
    grammar: Constraint | None = None
    # Keep generating past end-of-sequence tokens (benchmarks use it for fixed-length runs).
    ignore_eos: bool = False


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as a stream reports it."""

    # Position in the output, from 0.
    index: int
    # Token id.
    id: int
    # Text this token added to the output (may be empty while a UTF-8 character is incomplete).
    text: str
    # Log-probability of the token under the distribution it was chosen from.
    logprob: float
    # True for special tokens (end of sequence).
    special: bool


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation."""

    # Generated text (special tokens skipped).
    text: str
    # Why generation stopped.
    finish_reason: FinishReason
    # Number of generated tokens.
    generated_tokens: int
    # Number of prompt tokens.
    input_tokens: int
    # Seed used when sampling, else None.
    seed: int | None
    # Every generated token.
    tokens: tuple[TokenEvent, ...]


@dataclass(frozen=True)
class EngineStats:
    """What the engine is doing right now, and counters since it started."""

    # Requests in the running batch.
    active: int
    # Requests waiting to be admitted.
    waiting: int
    # Requests that finished normally.
    completed: int
    # Requests dropped because their client went away.
    cancelled: int
    # Requests that failed.
    failed: int
    # Tokens generated in total.
    generated_tokens: int


# ---- constrained decoding -----------------------------------------------------------------------

# Where a JSON text stands lexically: (open containers, inside a string, after a backslash).
_Lex = tuple[str, bool, bool]
_LEX_START: _Lex = ("", False, False)


def _lex(state: _Lex, data: bytes) -> _Lex:
    """``state`` after reading ``data``: enough JSON lexing to count what is still open."""
    stack, in_string, escaped = state
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte in (0x7B, 0x5B):  # { [
            stack += chr(byte)
        elif byte in (0x7D, 0x5D):  # } ]
            stack = stack[:-1]
        elif byte == 0x22:
            in_string = True
    return stack, in_string, escaped


def _depth(state: _Lex) -> int:
    """Structures still open: containers, plus one inside a string."""
    return len(state[0]) + state[1]


class GrammarCloser:
    """Finds a short token sequence that completes a grammar from a matcher's current state.

    Greedy, one token at a time, on a fork of the matcher: take the jump-forward string (text
    the grammar forces, e.g. a required key) in the fewest tokens that spell it; else, among the
    allowed pieces of JSON text (``"``, ``}``, ``]``, ``"}``, ``,``, ``0``, ``null``, ...), the
    one that completes the match or closes the most structure; when none makes progress, also
    the longest and shortest tokens the grammar allows (the content a string's ``minLength``,
    an enum or a regex still needs) and keep the best by the same rule. Content is taken in
    long tokens, then, in a second pass, in short ones (``{2,40}`` letters before a comma), and
    the shorter completion wins. Not always the shortest completion there is, but a valid one,
    found in about a millisecond for typical JSON.

    Args:
        decoded_vocab: Each token's bytes as the grammar engine sees them
            (``xgrammar.TokenizerInfo.decoded_vocab``).
        vocab_size: The model's logits width.
        excluded: Token ids never emitted (special tokens, stop tokens).
    """

    # Bytes of the short JSON pieces tried at every step, and whole words tried too.
    _PIECE_BYTES = frozenset(b'"{}[],:0')
    _WORDS = (b"null", b"true", b"false", b"1")
    _PUNCTUATION = frozenset(b",:")
    # Longest and shortest allowed tokens compared when no short piece makes progress.
    _SCAN = 8
    # Tokens a scan's content choice is reused for before the next scan.
    _MEMO_RUN = 16

    def __init__(self, decoded_vocab: Sequence[bytes], vocab_size: int,
                 excluded: Iterable[int] = ()) -> None:  # fmt: skip
        skip = set(excluded)
        pieces = [bytes(p) for p in decoded_vocab][:vocab_size]
        pieces += [b""] * (vocab_size - len(pieces))
        self.vocab_size = vocab_size
        self._pieces = pieces
        usable = [i for i, p in enumerate(pieces) if p and i not in skip]
        control = {i for i in usable if any(b < 0x20 for b in pieces[i])}
        self._ids: dict[bytes, int] = {}
        for i in usable:
            self._ids.setdefault(pieces[i], i)
        self._longest_piece = max((len(pieces[i]) for i in usable), default=1)
        short = [
            i
            for i in usable
            if i not in control and len(pieces[i]) <= 4 and set(pieces[i]) <= self._PIECE_BYTES
        ]
        words = [self._ids[w] for w in self._WORDS if w in self._ids]
        self._json_pieces = tuple(dict.fromkeys(short + words))
        self._json_piece_set = frozenset(self._json_pieces)
        self._lengths = torch.tensor([len(p) for p in pieces])  # (vocab,)
        self._usable = torch.zeros(vocab_size, dtype=torch.bool)  # (vocab,)
        self._usable[usable] = True
        self._printable = self._usable.clone()  # (vocab,) usable and free of control bytes
        self._printable[list(control)] = False
        self._bits = torch.arange(32, dtype=torch.int32)

    def piece(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` adds to the output."""
        return self._pieces[token_id]

    def tokenize(self, data: bytes) -> list[int] | None:
        """The fewest tokens whose bytes spell ``data`` exactly (None if none do)."""
        n = len(data)
        cost = [0] + [n + 1] * n
        back: list[tuple[int, int]] = [(0, -1)] * (n + 1)
        for i in range(n):
            if cost[i] > n:
                continue
            for j in range(i + 1, min(n, i + self._longest_piece) + 1):
                token = self._ids.get(data[i:j])
                if token is not None and cost[i] + 1 < cost[j]:
                    cost[j], back[j] = cost[i] + 1, (i, token)
        if cost[n] > n:
            return None
        out, j = [], n
        while j > 0:
            j, token = back[j]
            out.append(token)
        return out[::-1]

    def complete(self, matcher: Any, *, limit: int, json_like: bool = False,
                 lex: _Lex = _LEX_START) -> list[int] | None:  # fmt: skip
        """Tokens that take ``matcher`` to a complete match; ``matcher`` itself is not changed.

        Args:
            matcher: An ``xgrammar.GrammarMatcher`` in the state to complete from.
            limit: Most tokens to spend.
            json_like: The grammar is JSON (nesting guides the choice).
            lex: The JSON lexical state of the output so far.

        Returns:
            The tokens (empty when the match is already complete), or None when no completion
            within ``limit`` tokens was found.
        """
        # Content the grammar requires (a string's minLength, an enum, a regex's repeats) takes
        # the fewest tokens in long tokens or in short ones, depending on the grammar: when the
        # first pass had to choose content, a second pass tries short tokens and the shorter
        # completion wins.
        first, chose_content = self._greedy(matcher, limit, json_like, lex, longest=True)
        if not chose_content:
            return first
        bound = limit if first is None else len(first) - 1
        second, _ = self._greedy(matcher, bound, json_like, lex, longest=False)
        return first if second is None else second

    def _greedy(self, matcher: Any, limit: int, json_like: bool, lex: _Lex, *,
                longest: bool) -> tuple[list[int] | None, bool]:  # fmt: skip
        """One greedy pass (see the class); also whether it chose between content tokens."""
        m = matcher.fork()
        out: list[int] = []
        chose_content = False
        # The content token a scan last chose, reused without scanning (a long run of
        # letters) for at most _MEMO_RUN tokens before the next scan looks for a better one.
        memo, reused = -1, 0
        while not m.is_completed():
            if len(out) >= limit:
                return None, chose_content
            jump = m.find_jump_forward_string()
            if jump:
                data = jump.encode()
                ids = self.tokenize(data)
                if ids is not None and len(out) + len(ids) <= limit and _accept_all(m, ids):
                    out += ids
                    lex = _lex(lex, data) if json_like else lex
                    memo = -1  # forced text starts another part of the grammar
                    continue
            best = self._best(m, self._json_pieces if json_like else (), lex, json_like, longest)
            # Outside a JSON string a short piece beats any other token that does not close
            # more; inside one (minLength, enum, pattern) and in a regex, look further.
            if (
                best is None
                or not json_like
                or (lex[1] and best[0][0] and best[0][1] >= _depth(lex))
            ):
                chose_content = True
                if memo >= 0 and reused < self._MEMO_RUN and m.accept_token(memo):
                    out.append(memo)
                    lex = _lex(lex, self._pieces[memo]) if json_like else lex
                    reused += 1
                    continue
                scanned = self._scan(m, json_like)
                candidates = scanned + ([best[1]] if best else [])
                best = self._best(m, candidates, lex, json_like, longest)
                progress = best is not None and (not best[0][0] or best[0][1] < _depth(lex))
                memo, reused = (-1, 0) if best is None or progress else (best[1], 0)
            else:
                memo = -1
            if best is None:
                return None, chose_content
            _, token, lex = best
            m.accept_token(token)
            out.append(token)
        return out, chose_content

    def _best(self, m: Any, candidates: Sequence[int], lex: _Lex, json_like: bool,
              longest: bool) -> tuple[tuple[bool, int, int, int], int, _Lex] | None:  # fmt: skip
        """The accepted candidate that completes the match, else closes the most structure.

        Among equals: outside a JSON string, ``,`` / ``:`` (on to the next member) before the
        other short pieces (a whole value: ``0``, ``""``, ``null``...) before anything else
        (more digits of a number, ...); then the shorter token when it closes something, and
        when it is content the longer (or, with ``longest=False``, the shorter) one.
        """
        best = None
        depth = _depth(lex)
        for token in candidates:
            if not m.accept_token(token):
                continue
            done = m.is_completed()
            m.rollback(1)
            piece = self._pieces[token]
            after = _lex(lex, piece) if json_like else lex
            if json_like and not lex[1] and token in self._json_piece_set:
                kind = 0 if set(piece) <= self._PUNCTUATION else 1
            else:
                kind = 2
            progress = done or _depth(after) < depth
            size = len(piece) if progress or not longest else -len(piece)
            score = (not done, _depth(after), kind, size)
            if best is None or score < best[0]:
                best = (score, token, after)
        return best

    def _scan(self, m: Any, json_like: bool) -> list[int]:
        """The longest and the shortest tokens the grammar allows next."""
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)  # (1, ceil(vocab / 32))
        m.fill_next_token_bitmask(bitmask)
        bits = (bitmask[0].unsqueeze(1) >> self._bits) & 1  # (words, 32)
        allowed = bits.flatten()[: self.vocab_size].bool()  # (vocab,)
        allowed &= self._printable if json_like else self._usable
        ids = allowed.nonzero().flatten()
        if ids.numel() == 0:
            return []
        lengths = self._lengths[ids]
        k = min(self._SCAN, ids.numel())
        longest = ids[lengths.topk(k).indices]
        shortest = ids[(-lengths).topk(k).indices]
        return list(dict.fromkeys(torch.cat([longest, shortest]).tolist()))


def _accept_all(matcher: Any, ids: Sequence[int]) -> bool:
    """Accept every token or none (rolling back a partial run)."""
    for n, token in enumerate(ids):
        if not matcher.accept_token(token):
            if n:
                matcher.rollback(n)
            return False
    return True


class GrammarCache:
    """Compiles and caches grammars for one tokenizer; a bad grammar is an ``InputError``.

    The constraint is xgrammar's (a maintained grammar engine used by vLLM and SGLang); this
    class caches compiled grammars, bans tokens that would break the output, and measures each
    grammar's shortest output (:attr:`Constraint.shortest`).

    Args:
        tokenizer: The model's Hugging Face tokenizer.
        vocab_size: The model's logits width (may exceed the tokenizer's size).
        capacity: Compiled grammars kept (least recently used dropped first).
        max_shortest: Most tokens spent looking for a grammar's shortest output.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, capacity: int = 64,
                 max_shortest: int = 4096) -> None:  # fmt: skip
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: OrderedDict[str, Constraint] = OrderedDict()
        self._capacity = capacity
        self._max_shortest = max_shortest
        self._lock = threading.Lock()
        stop = set(info.stop_token_ids)
        # Special tokens that are not stop tokens (<s>, <unk>, [INST]...) would be dropped from
        # the decoded text, so the text would no longer be what the grammar matched.
        special = (set(tokenizer.all_special_ids) | set(info.special_token_ids)) - stop
        # JSON written without free whitespace never holds a raw control character, but
        # xgrammar 0.2's string rule with maxLength lets them through (they make json.loads
        # fail), so JSON grammars also mask every token holding a byte below 0x20.
        control = {i for i, piece in enumerate(info.decoded_vocab) if any(b < 0x20 for b in piece)}
        self._banned = _ids_tensor(special)
        self._json_banned = _ids_tensor(special | control)
        self.closer = GrammarCloser(info.decoded_vocab, vocab_size, excluded=special | stop)

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
        import xgrammar as xgr

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
        shortest = self.closer.complete(
            xgr.GrammarMatcher(compiled), limit=self._max_shortest, json_like=json_like
        )
        constraint = Constraint(
            compiled,
            self._json_banned if json_like else self._banned,
            self.closer,
            json_like,
            None if shortest is None else tuple(shortest),
        )
        with self._lock:
            self._cache[key] = constraint
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return constraint


def _ids_tensor(ids: Iterable[int]) -> torch.Tensor | None:
    values = sorted(ids)
    return torch.tensor(values, dtype=torch.long) if values else None


# ---- streams ------------------------------------------------------------------------------------

_Item = TokenEvent | tuple[TokenEvent, GenerationResult] | BaseException


class TokenStream:
    """Tokens of one request as they are generated, then its :class:`GenerationResult`.

    Iterate it from a thread (``for token in stream``) or from asyncio (``async for``; pass the
    running loop to :meth:`BatchEngine.submit`). After iteration ``result`` holds the outcome.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[_Item] | None = None if loop else queue.SimpleQueue()
        self._aqueue: asyncio.Queue[_Item] | None = asyncio.Queue() if loop else None
        self._cancelled = threading.Event()
        self.result: GenerationResult | None = None

    def _put(self, item: _Item) -> None:
        """Deliver an item (called from the engine thread)."""
        if self._aqueue is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self._cancelled.set()
        elif self._queue is not None:
            self._queue.put(item)

    def cancel(self) -> None:
        """Stop generating for this request (its row leaves the batch at the next step)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled.is_set()

    @property
    def finished(self) -> bool:
        """True once the last token was received (``result`` is set)."""
        return self.result is not None

    def _take(self, item: _Item) -> TokenEvent:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, tuple):
            token, self.result = item
            return token
        return item

    def __iter__(self) -> Iterator[TokenEvent]:
        """Tokens as generated; ``result`` is set when the last one is yielded."""
        if self._queue is None:
            raise TypeError("this stream was submitted with an event loop: use `async for`")
        try:
            while self.result is None:
                yield self._take(self._queue.get())
        finally:
            if self.result is None:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        """Tokens as generated; ``result`` is set when the last one is yielded."""
        if self._aqueue is None:
            raise TypeError("this stream was submitted without an event loop: use `for`")
        try:
            while self.result is None:
                yield self._take(await self._aqueue.get())
        finally:
            if self.result is None:
                self.cancel()

    def collect(self) -> GenerationResult:
        """Wait for the end of generation (from a thread) and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def acollect(self) -> GenerationResult:
        """Wait for the end of generation (from asyncio) and return the result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


class IncrementalDetokenizer:
    """Turn token ids into text deltas without splitting multi-byte characters.

    Same scheme as TGI's ``decode_token``: decode a short window of recent tokens and emit the
    text past what that window decoded to before, holding back while the tail is an incomplete
    UTF-8 sequence (U+FFFD).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_id: int) -> str:
        """Append a token and return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(
            self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True
        )
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return full[len(prefix) :]
        return ""


# A grammar request's closing tokens are checked at every token once its remaining budget
# exceeds them by at most _CLOSING_WINDOW tokens (one token that opens a nested object can add
# all its required members). Further from the end, a token is assumed to lengthen them by at
# most _CLOSING_SLACK tokens, and the next check comes when the budget could have shrunk to
# within the window.
_CLOSING_WINDOW = 64
_CLOSING_SLACK = 16


def _next_check(remaining: int, closing: int) -> int:
    """Tokens that may go by unchecked with ``remaining`` tokens of budget left and ``closing``
    tokens needed to finish the grammar."""
    gap = remaining - closing
    if gap <= _CLOSING_WINDOW:
        return 0
    return (gap - _CLOSING_WINDOW) // (_CLOSING_SLACK + 1)


class _Row:
    """Per-request state inside the engine."""

    def __init__(
        self, request: GenerationRequest, stream: TokenStream, engine: BatchEngine
    ) -> None:
        self.request = request
        self.stream = stream
        self.group: str | None = None
        sampling = request.sampling
        self.seed = sampling.seed
        if sampling.do_sample and self.seed is None:
            self.seed = random.getrandbits(63)
        self.generator: torch.Generator | None = None
        if sampling.do_sample:
            self.generator = torch.Generator().manual_seed(self.seed or 0)
        self.warpers = _warpers(sampling)
        self.matcher: Any = None
        # Finishing the grammar within the budget (see BatchEngine._keep_closable): the closing
        # tokens from the state at output index ``closing_at``, and when to measure them next.
        self.closer: GrammarCloser | None = None
        self.closing: list[int] | None = None
        self.closing_at = 0
        self.next_check = 0
        self.lex = _LEX_START
        grammar = request.grammar
        if grammar is not None:
            import xgrammar as xgr

            self.matcher = xgr.GrammarMatcher(grammar.compiled)
            self.bitmask = xgr.allocate_token_bitmask(1, engine.vocab_size)
            if grammar.closer is not None and grammar.shortest is not None:
                self.closer = grammar.closer
                self.closing = list(grammar.shortest)
                budget = min(
                    request.max_new_tokens, engine.max_total_tokens - len(request.input_ids)
                )
                self.next_check = _next_check(budget, len(self.closing))
        # Prompt + output ids, for the repetition penalty.
        self.all_ids = list(request.input_ids)
        self.counts: torch.Tensor | None = None
        if sampling.frequency_penalty:
            self.counts = torch.zeros(engine.vocab_size)
        self.detok = IncrementalDetokenizer(engine.tokenizer)
        self.tokens: list[TokenEvent] = []
        self.text = ""
        self.next_input = -1
        self.finish: FinishReason | None = None

    @property
    def position(self) -> int:
        """Position id of the token fed at the next step."""
        return len(self.all_ids) - 1


class _Temperature:
    """Softmax temperature that stays finite for any positive value: the scores are shifted so
    the best is 0 before dividing. HF's warper divides first, and a temperature such as 1e-300
    (which TGI accepts) made the scores infinite and the probabilities NaN."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, input_ids: Any, scores: torch.Tensor) -> torch.Tensor:
        best = scores.max(dim=-1, keepdim=True).values  # (batch, 1)
        # Below the dtype's smallest normal number the temperature would round to 0 (and 0/0 is
        # NaN); at that size the distribution is already all on the best token.
        return (scores - best) / max(self.temperature, torch.finfo(scores.dtype).tiny)


def _warpers(sampling: SamplingOptions) -> list[Any]:
    """HF logits warpers for a request (empty for greedy decoding)."""
    from transformers.generation.logits_process import (
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    if not sampling.do_sample:
        return []
    warpers: list[Any] = []
    if sampling.temperature is not None and sampling.temperature != 1.0:
        warpers.append(_Temperature(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    if sampling.typical_p is not None and sampling.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(sampling.typical_p))
    return warpers


class BatchEngine:
    """A decode loop over every active request of one model.

    Every step runs under ``torch.inference_mode()`` on the engine's own thread; nothing here
    changes torch's process-wide settings.

    Args:
        model: A causal LM (``AutoModelForCausalLM``), already on its device and in eval mode.
        tokenizer: Its tokenizer.
        max_batch_size: Most requests decoded together; more wait in the queue.
        max_concurrent_requests: Most requests running or waiting; one more raises
            :class:`EngineOverloaded` (TGI answers 429 there).
        max_total_tokens: Prompt + output length limit of the model.
        name: Shown in logs and thread names.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 8,
        max_concurrent_requests: int = 32,
        max_total_tokens: int = 2048,
        name: str = "engine",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_concurrent_requests = max_concurrent_requests
        self.max_total_tokens = max_total_tokens
        self.name = name
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._waiting: deque[_Row] = deque()
        # Rows taken from the queue and being prefilled: in neither _waiting nor _rows, yet in
        # flight (a stream may already hold its first token), so counted against the limits.
        self._admitting: list[_Row] = []
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (batch, cached length), 1 = real token
        self._lock = threading.Condition()
        self._stopping = False
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "generated_tokens": 0}
        self._thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self._thread.start()

    # ---- public API -----------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        group: str | None = None,
        group_limit: int | None = None,
    ) -> TokenStream:
        """Queue a request and return its stream.

        Args:
            request: The prompt and options.
            loop: The running event loop when the caller will iterate with ``async for``.
            group: Who the request counts against (the tier: tiers sharing weights share the
                engine but keep their own limits).
            group_limit: Most requests of ``group`` in flight.

        Raises:
            EngineOverloaded: when ``max_concurrent_requests`` (or the group's limit) are
                already in flight.
        """
        stream = TokenStream(loop)
        row = _Row(request, stream, self)
        row.group = group
        with self._lock:
            if self._stopping:
                raise GenerationFailed(f"{self.name} was unloaded; retry the request")
            in_flight = [*self._waiting, *self._admitting, *self._rows]
            if len(in_flight) >= self.max_concurrent_requests:
                raise EngineOverloaded("Model is overloaded")
            same_group = sum(1 for r in in_flight if r.group == group)
            if group_limit is not None and same_group >= group_limit:
                raise EngineOverloaded("Model is overloaded")
            self._waiting.append(row)
            self._lock.notify()
        return stream

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate to the end (blocking) and return the result."""
        return self.submit(request).collect()

    def stats(self) -> EngineStats:
        """Current load and counters."""
        with self._lock:
            return EngineStats(active=len(self._rows), waiting=len(self._waiting), **self._counters)

    @property
    def busy(self) -> bool:
        """True while any request is running or waiting."""
        with self._lock:
            return bool(self._rows or self._waiting or self._admitting)

    def stop(self) -> None:
        """Stop the loop; requests still in flight fail with a retry message."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # ---- decode loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._rows and not self._waiting:
                    self._lock.wait()
                if self._stopping:
                    pending = list(self._waiting) + self._rows
                    self._waiting.clear()
                    break
                room = self.max_batch_size - len(self._rows)
                admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self._admitting = admitted
            try:
                with torch.inference_mode():
                    if admitted:
                        self._admit(admitted)
                    with self._lock:
                        self._admitting = []  # merged into _rows, or finished
                    self._drop_cancelled()
                    if self._rows:
                        self._step()
            except Exception as e:  # one bad batch must not kill the loop
                logger.exception("%s: generation failed", self.name)
                failed = [r for r in admitted if r not in self._rows] + self._rows
                for row in failed:
                    if row.finish is None:
                        row.stream._put(GenerationFailed(f"generation failed: {type(e).__name__}"))
                with self._lock:
                    self._counters["failed"] += len(failed)
                    self._rows = []
                self._cache = self._mask = None
            finally:
                with self._lock:
                    self._admitting = []
        for row in pending:
            row.stream._put(GenerationFailed(f"{self.name} was unloaded; retry the request"))

    def _admit(self, rows: list[_Row]) -> None:
        """Prefill newly admitted requests together and merge their caches into the batch.

        One forward pass over all new prompts (left-padded) reads the weights once, instead of
        once per request: on a memory-bound CPU that is most of a prefill's cost.
        """
        from transformers import DynamicCache

        for row in [r for r in rows if r.stream.cancelled]:
            self._finish_cancelled(row)
        rows = [r for r in rows if not r.stream.cancelled]
        if not rows:
            return
        ids, mask, positions = _left_padded([r.request.input_ids for r in rows], self.device)
        cache = DynamicCache()
        # Only the last position's logits: the others would cost a (rows, width, vocab) product
        # with the output embedding, as much as the layers for a small model's big vocabulary.
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()  # (new rows, vocab)
        for i, row in enumerate(rows):
            self._advance(row, logits[i])
        keep = [i for i, r in enumerate(rows) if r.finish is None]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self._merge([rows[i] for i in keep], cache, mask.index_select(0, index))

    def _merge(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Append prefilled rows to the batch, left-padding whichever side is shorter."""
        with self._lock:
            self._rows.extend(rows)
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        current, length = self._mask.shape[1], mask.shape[1]
        width = max(current, length)
        self._mask = torch.cat(
            [_left_pad(self._mask, width - current, dim=1), _left_pad(mask, width - length, dim=1)]
        )
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            # (batch, kv_heads, length, head_dim)
            mine.keys = torch.cat(
                [_left_pad(mine.keys, width - current), _left_pad(theirs.keys, width - length)]
            )
            mine.values = torch.cat(
                [_left_pad(mine.values, width - current), _left_pad(theirs.values, width - length)]
            )

    def _step(self) -> None:
        """One decode step over the whole batch."""
        assert self._mask is not None
        rows = self._rows
        ids = torch.tensor([[r.next_input] for r in rows], device=self.device)  # (batch, 1)
        positions = torch.tensor([[r.position] for r in rows], device=self.device)  # (batch, 1)
        ones = torch.ones(len(rows), 1, dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=1)  # (batch, cached + 1)
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
        )
        logits = out.logits[:, -1].float()  # (batch, vocab)
        for i, row in enumerate(rows):
            self._advance(row, logits[i])
        self._drop([r for r in rows if r.finish is not None])

    def _drop_cancelled(self) -> None:
        gone = [r for r in self._rows if r.stream.cancelled]
        for row in gone:
            self._finish_cancelled(row)
        self._drop(gone)

    def _finish_cancelled(self, row: _Row) -> None:
        row.stream._put(GenerationCancelled("the client went away"))
        with self._lock:
            self._counters["cancelled"] += 1

    def _drop(self, gone: Sequence[_Row]) -> None:
        """Remove rows from the batch and trim columns that are padding for every row left."""
        if not gone:
            return
        keep = [i for i, r in enumerate(self._rows) if r not in gone]
        with self._lock:
            self._rows = [self._rows[i] for i in keep]
        if not keep or self._mask is None:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0])
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _advance(self, row: _Row, logits: torch.Tensor) -> None:
        """Choose the row's next token from its logits and deliver it."""
        token, logprob = self._choose(row, logits)
        request = row.request
        special = token in self.eos_ids
        if row.matcher is not None and not row.matcher.is_terminated():
            row.matcher.accept_token(token)
            if row.closer is not None and request.grammar and request.grammar.json_like:
                row.lex = _lex(row.lex, row.closer.piece(token))
        row.all_ids.append(token)
        if row.counts is not None:
            row.counts[token] += 1
        text = "" if special else row.detok.add(token)
        row.text += text
        event = TokenEvent(len(row.tokens), token, text, logprob, special)
        row.tokens.append(event)
        row.next_input = token
        grammar_done = row.matcher is not None and row.matcher.is_terminated()
        if (special and not request.ignore_eos) or grammar_done:
            row.finish = "eos_token"
        elif request.stop and any(s in row.text[-(len(text) + len(s)) :] for s in request.stop):
            row.finish = "stop_sequence"
        elif len(row.tokens) >= request.max_new_tokens or len(row.all_ids) >= self.max_total_tokens:
            row.finish = "length"
        if row.finish is None:
            row.stream._put(event)
        else:
            result = GenerationResult(
                text=self.tokenizer.decode(
                    [t.id for t in row.tokens if not t.special], skip_special_tokens=True
                ),
                finish_reason=row.finish,
                generated_tokens=len(row.tokens),
                input_tokens=len(request.input_ids),
                seed=row.seed,
                tokens=tuple(row.tokens),
            )
            # The last token travels with the result, so a stream knows it is the last.
            row.stream._put((event, result))
            with self._lock:
                self._counters["completed"] += 1
                self._counters["generated_tokens"] += len(row.tokens)

    def _choose(self, row: _Row, logits: torch.Tensor) -> tuple[int, float]:
        """Apply grammar, penalties and warpers to one row's logits (vocab,) and pick a token."""
        sampling = row.request.sampling
        scores = logits[: self.vocab_size].unsqueeze(0)  # (1, vocab)
        if row.matcher is not None and not row.matcher.is_terminated():
            import xgrammar as xgr

            row.matcher.fill_next_token_bitmask(row.bitmask)
            xgr.apply_token_bitmask_inplace(scores, row.bitmask)
            banned = row.request.grammar.banned_ids if row.request.grammar else None
            if banned is not None:
                scores[0, banned] = float("-inf")
        if sampling.repetition_penalty and sampling.repetition_penalty != 1.0:
            seen = torch.tensor(row.all_ids, device=scores.device).unsqueeze(0)  # (1, seen)
            picked = scores.gather(1, seen)
            picked = torch.where(
                picked < 0,
                picked * sampling.repetition_penalty,
                picked / sampling.repetition_penalty,
            )
            scores = scores.scatter(1, seen, picked)
        if row.counts is not None and sampling.frequency_penalty:
            scores = scores - sampling.frequency_penalty * row.counts.to(scores.device)
        if sampling.do_sample:
            for warper in row.warpers:
                scores = warper(None, scores)
            logprobs = torch.log_softmax(scores, dim=-1)
            token = int(torch.multinomial(logprobs.exp()[0].cpu(), 1, generator=row.generator))
        else:
            logprobs = torch.log_softmax(scores, dim=-1)
            token = int(scores.argmax(dim=-1))
        if row.closer is not None:
            token = self._keep_closable(row, token)
        logprob = float(logprobs[0, token])
        # A token forced by the grammar may have been masked (-inf): JSON has no infinities.
        return token, logprob if math.isfinite(logprob) else LOWEST_LOGPROB

    def _keep_closable(self, row: _Row, token: int) -> int:
        """``token``, unless taking it would leave too few tokens to complete the grammar.

        Near the end of the budget every chosen token is checked: the row's closing tokens
        (a completion found by the closer) must still complete the grammar after it, or a new
        completion that fits is looked for; when none fits, the first closing token from the
        current state is emitted instead, so the output matches the grammar when the budget
        runs out. Content (more digits, more of a string) keeps the closing tokens valid, so
        most checks are a matcher fork and a few token acceptances. Far from the end nothing is
        checked until the budget could have come within ``_CLOSING_WINDOW`` tokens of the
        completion's length (each token assumed to lengthen it by at most ``_CLOSING_SLACK``).
        """
        n = len(row.tokens)
        closer = row.closer
        if n < row.next_check or closer is None or row.matcher.is_terminated():
            return token
        remaining = min(row.request.max_new_tokens - n, self.max_total_tokens - len(row.all_ids))
        json_like = bool(row.request.grammar and row.request.grammar.json_like)
        if row.closing_at != n:
            row.closing = closer.complete(
                row.matcher, limit=remaining, json_like=json_like, lex=row.lex
            )
            row.closing_at = n
        closing = row.closing
        if closing is None:  # no completion fits any more: nothing left to force
            row.next_check = n + _CLOSING_SLACK
            return token
        if not closing:  # already complete: the grammar allows only a stop token
            return token
        if len(closing) < remaining:
            trial = row.matcher.fork()
            if trial.accept_token(token):
                probe = trial.fork()
                if _accept_all(probe, closing) and probe.is_completed():
                    after: list[int] | None = closing  # still a completion, and it fits
                else:
                    lex = _lex(row.lex, closer.piece(token)) if json_like else row.lex
                    after = closer.complete(
                        trial, limit=remaining - 1, json_like=json_like, lex=lex
                    )
                if after is not None:
                    row.closing, row.closing_at = after, n + 1
                    row.next_check = n + 1 + _next_check(remaining - 1, len(after))
                    return token
        row.closing, row.closing_at, row.next_check = closing[1:], n + 1, n + 1
        return closing[0]


def _left_padded(prompts: Sequence[Sequence[int]], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Prompts as one left-padded batch: ids, attention mask and position ids, each
    (batch, longest prompt). Positions count real tokens only, so padding does not shift RoPE."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        n = len(prompt)
        ids[i, width - n :] = torch.tensor(list(prompt), dtype=torch.long, device=device)
        mask[i, width - n :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def _left_pad(t: torch.Tensor, n: int, dim: int = 2) -> torch.Tensor:
    """Prepend ``n`` zeros along ``dim``."""
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the tokenizer and the generation config."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(int(i) for i in config_eos)
    return frozenset(ids)


@dataclass(frozen=True)
class PromptPrefix:
    """The key/value cache of a prompt prefix that many prompts share (an instruction), so a
    scoring call runs only the part after it. Make it with :func:`encode_prefix`."""

    # The prefix's token ids.
    ids: tuple[int, ...]
    # Per layer, the keys and values: (1, kv_heads, len(ids), head_dim) each.
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def encode_prefix(model: Any, ids: Sequence[int]) -> PromptPrefix:
    """Run a prompt prefix once and keep its key/value cache (:class:`PromptPrefix`)."""
    from transformers import DynamicCache

    if not ids:
        raise ValueError("a prompt prefix needs at least one token")
    device = next(model.parameters()).device
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(ids)], device=device), past_key_values=cache,
              use_cache=True, logits_to_keep=1)  # fmt: skip
    return PromptPrefix(tuple(ids), tuple((layer.keys, layer.values) for layer in cache.layers))


def next_token_logprobs(
    model: Any, prompts: Sequence[Sequence[int]], *, prefix: PromptPrefix | None = None
) -> torch.Tensor:
    """Log-probabilities of the token that follows each prompt, from one forward pass.

    What classification or scoring with an LLM needs (compare the log-probabilities of a few
    label tokens) without a generation loop. Safe to call while the model's
    :class:`BatchEngine` decodes on its own thread.

    Args:
        model: A causal LM on its device, in eval mode.
        prompts: Token ids of each prompt, special tokens included (at least one prompt, none
            empty); with ``prefix``, the ids that follow it.
        prefix: A shared start of every prompt, already run (:func:`encode_prefix`): only the
            rest is computed, against its cache.

    Returns:
        ``(len(prompts), vocab)`` float32 log-probabilities, on the model's device.
    """
    from transformers import DynamicCache

    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("next_token_logprobs needs at least one prompt and no empty prompt")
    device = next(model.parameters()).device
    ids, mask, positions = _left_padded(prompts, device)
    cache = None
    if prefix is not None:
        # [prefix][padding][prompt]: the padding is masked, positions continue the prefix's.
        batch, start = len(prompts), len(prefix.ids)
        mask = torch.cat([mask.new_ones(batch, start), mask], dim=1)
        positions = positions + start
        cache = DynamicCache()
        for index, (keys, values) in enumerate(prefix.layers):
            cache.update(keys.expand(batch, -1, -1, -1).contiguous(),
                         values.expand(batch, -1, -1, -1).contiguous(), index)  # fmt: skip
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (batch, vocab)


# ---- the model registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load; callers asking for equal specs share one loaded model."""

    # Hub repo id ("owner/name") or local directory.
    model: str
    # Hub branch, tag or commit of ``model`` (None: the default branch; ignored for a folder).
    revision: str | None = None
    # PEFT adapter (Hub id or local directory) merged into a copy of the weights, or None.
    adapter: str | None = None
    # Hub revision of the adapter.
    adapter_revision: str | None = None
    # Precision of the weights ("auto": bf16 or fp16 on a GPU; on a CPU bf16 where it has native
    # bf16, fp32 elsewhere).
    dtype: Dtype = "auto"

    @classmethod
    def parse(cls, model: str, revision: str | None = None, **fields: Any) -> ModelSpec:
        """A spec from ``"owner/name"``, ``"owner/name@rev"`` or a local path (``revision``
        wins over one in ``model``), so both spellings of the same weights are one spec."""
        source = ModelSource.parse(model, revision)
        return cls(source.location, source.revision, **fields)


@dataclass(frozen=True)
class EngineLimits:
    """How a loaded model's :class:`BatchEngine` is sized."""

    # Requests decoded together in one batch.
    max_batch_size: int = 8
    # Requests running or waiting before the engine raises EngineOverloaded.
    max_concurrent_requests: int = 32
    # Prompt + output tokens; None: the model's context length (never more than it).
    max_total_tokens: int | None = None


# Short precision names for torch dtype names.
_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(eq=False)
class LoadedModel:
    """Weights in memory, with the engine and grammar cache that serve them."""

    # What was asked for (the registry's key).
    spec: ModelSpec
    # The causal LM, on its device, in eval mode.
    model: Any
    # Its tokenizer.
    tokenizer: Any
    # The decode loop over this model.
    engine: BatchEngine
    # Compiled grammars for this tokenizer.
    grammars: GrammarCache
    # Device ("cpu", "cuda") and torch dtype name ("float32", ...).
    device: str
    dtype: str
    # Demo marker (random weights) of the model or its adapter, or None for real weights.
    demo: dict[str, Any] | None
    # Context length of the model.
    context_length: int
    # Bytes held by the parameters.
    nbytes: int
    # Seconds spent loading.
    load_seconds: float
    # time.monotonic() of the last use, for LRU eviction.
    last_used: float
    # Calls of next_token_logprobs in flight (a model in use is never evicted).
    _scoring: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _chars_per_token: int | None = field(default=None, repr=False)

    @property
    def precision(self) -> str:
        """The dtype's short name, as ``/health`` reports it: ``fp32``, ``bf16`` or ``fp16``."""
        return _PRECISION.get(self.dtype, self.dtype)

    @property
    def max_chars_per_token(self) -> int:
        """Most characters of text one token can stand for: twice the longest vocabulary entry
        (the margin covers normalizers that fold several characters into one). A text longer
        than ``n * max_chars_per_token`` has more than ``n`` tokens, known without tokenizing."""
        if self._chars_per_token is None:
            longest = max(map(len, self.tokenizer.get_vocab()), default=1)
            self._chars_per_token = 2 * max(1, longest)
        return self._chars_per_token

    @property
    def model_id(self) -> str:
        """Hub repo id or local path of the weights."""
        return self.spec.model

    @property
    def revision(self) -> str | None:
        """Hub revision asked for (None: the default branch, or a local folder)."""
        return self.spec.revision

    @property
    def adapter(self) -> str | None:
        """The merged adapter, if any."""
        return self.spec.adapter

    @property
    def busy(self) -> bool:
        """True while a generation or a scoring call uses the model."""
        return self._scoring > 0 or self.engine.busy

    def next_token_logprobs(
        self, prompts: Sequence[Sequence[int]], *, prefix: PromptPrefix | None = None
    ) -> torch.Tensor:
        """:func:`next_token_logprobs` on this model, which counts as in use meanwhile."""
        with self._lock:
            self._scoring += 1
        try:
            return next_token_logprobs(self.model, prompts, prefix=prefix)
        finally:
            with self._lock:
                self._scoring -= 1


class CausalLMRegistry:
    """Loads causal LMs on demand, shares identical weights, keeps them under a memory budget.

    Each :class:`ModelSpec` is loaded once (concurrent callers wait for the one load) and gets
    one :class:`BatchEngine`, so every request on the same weights is batched together. Before a
    model loads, idle models are unloaded least recently used first until its checkpoint fits
    the budget; busy models are never unloaded (the budget is exceeded, with a warning, when
    only busy models are left).

    Args:
        memory_budget_gb: Weights kept in memory, in GiB; None for no budget.
        token: Hub token for private or gated repos (never logged).
        device: "auto", "cpu" or "cuda".
    """

    def __init__(self, *, memory_budget_gb: float | None = None, token: str | None = None,
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:  # fmt: skip
        self.memory_budget_gb = memory_budget_gb
        self._token = token
        self._device = device
        self._models: dict[ModelSpec, LoadedModel] = {}
        self._errors: dict[ModelSpec, str] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[ModelSpec, threading.Lock] = {}

    def get(self, spec: ModelSpec, limits: EngineLimits | None = None, *,
            name: str | None = None) -> LoadedModel:  # fmt: skip
        """The model for ``spec``, loading it (and unloading idle ones over budget) if needed.

        Args:
            spec: The weights.
            limits: Sizes the engine when this call loads the model (ignored otherwise).
            name: Shown in logs and the engine's thread name; the model's folder name if None.

        Raises:
            ModelLoadError: when the model cannot be loaded; the message says why.
        """
        with self._lock:
            lock = self._load_locks.setdefault(spec, threading.Lock())
        with lock:
            loaded = self._models.get(spec)
            if loaded is None:
                try:
                    loaded = self._load(spec, limits or EngineLimits(), name)
                except ModelLoadError as e:
                    self._errors[spec] = str(e)
                    raise
                except Exception as e:
                    message = f"loading {spec.model} failed: {type(e).__name__}: {e}"
                    self._errors[spec] = message
                    raise ModelLoadError(message) from e
                with self._lock:
                    self._models[spec] = loaded
                    self._errors.pop(spec, None)
            loaded.last_used = time.monotonic()
            return loaded

    def loaded(self, spec: ModelSpec) -> LoadedModel | None:
        """The model for ``spec`` if it is in memory now."""
        return self._models.get(spec)

    def error(self, spec: ModelSpec) -> str | None:
        """Why the last load of ``spec`` failed, if it did."""
        return self._errors.get(spec)

    def models(self) -> list[LoadedModel]:
        """Models in memory now."""
        with self._lock:
            return list(self._models.values())

    def shutdown(self) -> None:
        """Stop every engine."""
        for loaded in self.models():
            loaded.engine.stop()

    def _load(self, spec: ModelSpec, limits: EngineLimits, name: str | None) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.monotonic()
        source = ModelSource(spec.model, spec.revision)
        folder = resolve_model(
            source, required=["config.json", TRANSFORMERS_WEIGHTS], token=self._token
        )
        # Generation is served in bf16 where the CPU computes in it natively: the weights are
        # read once per decoded token, and bf16 halves them (1.5x tokens/s at one stream, 1.7x
        # at eight, in the same run of benchmarks/results/llm-tiers.md).
        choice = select_device(self._device, spec.dtype, cpu_bf16=True)
        # Room is made before loading, from the checkpoint's size, so two models never overlap.
        self._make_room(_checkpoint_bytes(folder, choice.dtype))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=choice.torch_dtype())
        adapter_demo = None
        if spec.adapter:
            from peft import PeftModel

            adapter_folder = resolve_model(
                ModelSource.parse(spec.adapter, spec.adapter_revision),
                required=[
                    "adapter_config.json",
                    ("adapter_model.safetensors", "adapter_model.bin"),
                ],
                token=self._token,
            )
            # Merged into its own copy of the base weights: a spec without the adapter keeps
            # the original weights.
            model = PeftModel.from_pretrained(model, adapter_folder).merge_and_unload()
            adapter_demo = demo_info(adapter_folder)
        model = model.to(choice.device).eval()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # On a CPU each linear weight is reordered once into oneDNN's blocked layout: the same
        # products, with the weights read 2-3x faster per decode step (shared.packed).
        pack_linears(model)
        text_config = model.config.get_text_config()
        context = int(getattr(text_config, "max_position_embeddings", 0) or 2048)
        engine = BatchEngine(
            model,
            tokenizer,
            max_batch_size=limits.max_batch_size,
            max_concurrent_requests=limits.max_concurrent_requests,
            max_total_tokens=min(limits.max_total_tokens or context, context),
            name=name or source.location.rstrip("/").rsplit("/", 1)[-1],
        )
        grammars = GrammarCache(tokenizer, int(text_config.vocab_size))
        seconds = time.monotonic() - start
        logger.info(
            "loaded %s (%s, %.0f MB) in %.1fs", source, choice.dtype, nbytes / 2**20, seconds
        )
        return LoadedModel(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            engine=engine,
            grammars=grammars,
            device=choice.device,
            dtype=choice.dtype,
            demo=demo_info(folder) or adapter_demo,
            context_length=context,
            nbytes=nbytes,
            load_seconds=seconds,
            last_used=time.monotonic(),
        )

    def _make_room(self, nbytes: int) -> None:
        """Unload idle models, least recently used first, until ``nbytes`` more fit the budget."""
        budget_gb = self.memory_budget_gb
        if budget_gb is None:
            return
        budget = int(budget_gb * 2**30)
        with self._lock:
            used = sum(m.nbytes for m in self._models.values())
            victims = sorted(self._models.values(), key=lambda m: m.last_used)
            evicted = []
            for victim in victims:
                if used + nbytes <= budget:
                    break
                if victim.busy:
                    continue
                del self._models[victim.spec]
                used -= victim.nbytes
                evicted.append(victim)
        for victim in evicted:
            logger.info("memory budget %.1f GiB: unloading %s", budget_gb, victim.model_id)
            victim.engine.stop()
        if evicted:
            gc.collect()
        if used + nbytes > budget:
            logger.warning(
                "memory budget %.1f GiB exceeded (%.2f GiB in use by busy models); loading anyway",
                budget_gb,
                (used + nbytes) / 2**30,
            )


_ITEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _checkpoint_bytes(folder: Path, dtype: str = "float32") -> int:
    """What loading a model folder's weights in ``dtype`` will roughly take: the size of its
    weight files, scaled from the dtype they are stored in (config.json's, fp32 if unsaid)."""
    stored = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    saved = config.get("dtype") or config.get("torch_dtype") or "float32"
    return stored * _ITEM_BYTES.get(dtype, 4) // _ITEM_BYTES.get(str(saved), 4)
