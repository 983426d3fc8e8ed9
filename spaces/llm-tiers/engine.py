"""Batched token generation: one decode loop per loaded model, shared by every request on it.

Each model gets a :class:`BatchEngine`: a background thread that admits queued requests, prefills
the new ones together in one left-padded forward pass, then merges them into the running
left-padded batch whose KV cache grows by one column per decode step. Finished and cancelled
rows are dropped between steps and the all-padding columns trimmed, the way TGI's
``CausalLMBatch.concatenate`` / ``filter`` works for models without paged attention. Token
choice is per row, so every request keeps its own sampling parameters, seed, stop sequences and
grammar (an xgrammar matcher) inside a shared forward pass.

Why not ``transformers``' continuous batching manager: it applies one generation config to the
whole batch (no per-request seed, no per-request grammar, no stop strings) and its paged attention
targets GPUs; the benchmark in ``benchmarks/llm_tiers`` measures it on this CPU for comparison.

Results come back through a :class:`TokenStream`, which a thread iterates (Gradio, benchmark) and
an asyncio task iterates (HTTP routes) with ``async for``; cancelling it (a client that went away)
drops the row at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class EngineOverloaded(RuntimeError):
    """Too many requests in flight for this model; served as HTTP 429."""


class GenerationFailed(RuntimeError):
    """Generation broke mid-way (e.g. out of memory); served as HTTP 424."""


class GenerationCancelled(RuntimeError):
    """The request was cancelled (its client disconnected) before it finished."""


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
    """A compiled grammar plus tokens it must never produce."""

    # An ``xgrammar.CompiledGrammar`` compiled for this model's tokenizer.
    compiled: Any
    # Token ids masked out on top of the grammar (None for none).
    banned_ids: torch.Tensor | None = None


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
    # A grammar the output must follow (see ``grammar.py``), or None.
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
        self.matcher = None
        if request.grammar is not None:
            import xgrammar as xgr

            self.matcher = xgr.GrammarMatcher(request.grammar.compiled)
            self.bitmask = xgr.allocate_token_bitmask(1, engine.vocab_size)
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


def _warpers(sampling: SamplingOptions) -> list[Any]:
    """HF logits warpers for a request (empty for greedy decoding)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    if not sampling.do_sample:
        return []
    warpers: list[Any] = []
    if sampling.temperature is not None and sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    if sampling.typical_p is not None and sampling.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(sampling.typical_p))
    return warpers


class BatchEngine:
    """A decode loop over every active request of one model.

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
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (batch, cached length), 1 = real token
        self._lock = threading.Condition()
        self._stopping = False
        self._counters = {"completed": 0, "cancelled": 0, "failed": 0, "generated_tokens": 0}
        self._thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------------

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
            in_flight = [*self._waiting, *self._rows]
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
            return bool(self._rows or self._waiting)

    def stop(self) -> None:
        """Stop the loop; requests still in flight fail with a retry message."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # ---- decode loop ------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
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
            try:
                with torch.inference_mode():
                    if admitted:
                        self._admit(admitted)
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
        width = max(len(r.request.input_ids) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            n = len(row.request.input_ids)
            ids[i, width - n :] = torch.tensor(row.request.input_ids, device=self.device)
            mask[i, width - n :] = 1
        # (new rows, width): positions count real tokens only, so padding does not shift RoPE.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
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
        return token, float(logprobs[0, token])


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
