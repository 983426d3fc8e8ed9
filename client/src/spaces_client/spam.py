"""``SpamClient``: the spam-mistral Space (spam classification, scam-conversation replies).

Paths: Gradio ``/predict``, ``/predict_batch``, ``/generate_reply``; REST ``POST /api/classify``
(``{"text"}`` / ``{"texts"}``) and ``POST /api/generate-reply``; the fallbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from spaces_client._base import SpaceClient, validator
from spaces_client.engine import GradioCall, Request, RestCall
from spaces_client.models import ScamReply, SpamClassification

#: spam-mistral's batch limit.
MAX_BATCH = 64
#: A conversation: turns ``{"role": "scammer"|"victim", "text": ...}``, or one text.
Conversation = Sequence[dict[str, str]] | str

_parse_verdict = validator(SpamClassification)
_parse_reply = validator(ScamReply)


class SpamClient(SpaceClient):
    """Typed client of the spam-mistral Space."""

    kind = "spam"

    def _classify(self, text: str) -> Request[SpamClassification]:
        return Request(
            name="classify",
            gradio=GradioCall("/predict", (text,)),
            parse_gradio=_parse_verdict,
            rest=RestCall("POST", "/api/classify", json={"text": text}),
            parse_rest=_parse_verdict,
            local_args=(text,),
            parse_local=_parse_verdict,
        )

    def _batch(self, texts: list[str]) -> Request[list[SpamClassification]]:
        def many(values: Any) -> list[SpamClassification]:
            verdicts = [_parse_verdict(v) for v in values]
            if len(verdicts) != len(texts):
                raise ValueError(f"{len(verdicts)} verdicts for {len(texts)} messages")
            return verdicts

        return Request(
            name="classify_many",
            gradio=GradioCall("/predict_batch", (texts,)),
            parse_gradio=many,
            rest=RestCall("POST", "/api/classify", json={"texts": texts}),
            parse_rest=many,
            local_args=(texts,),
            parse_local=many,
        )

    def _reply(
        self,
        conversation: Conversation,
        persona: str | None,
        style: str | None,
        parameters: dict[str, Any],
    ) -> Request[ScamReply]:
        turns: Any = conversation if isinstance(conversation, str) else list(conversation)
        named = {k: v for k, v in {"persona": persona, "style": style}.items() if v is not None}
        return Request(
            name="generate_reply",
            gradio=GradioCall("/generate_reply", (turns,), {**named, **parameters}),
            parse_gradio=_parse_reply,
            rest=RestCall(
                "POST",
                "/api/generate-reply",
                json={"conversation": turns, **named, "parameters": parameters or None},
            ),
            parse_rest=_parse_reply,
            local_args=(turns, persona, style),
            local_kwargs=parameters,
            parse_local=_parse_reply,
        )

    def probe(self) -> Request[SpamClassification]:
        """A one-message classification."""
        return self._classify("Hello, are we still meeting at 7?")

    def classify(self, text: str, *, timeout: float | None = None) -> SpamClassification:
        """Classify one message as spam or not_spam.

        Args:
            text: The message (SMS, e-mail, chat), at most 20,000 characters.
            timeout: This call's deadline in seconds.

        Returns:
            classification, confidence, probabilities, model, truncated.
        """
        return self._run(self._classify(text), timeout)

    async def aclassify(self, text: str, *, timeout: float | None = None) -> SpamClassification:
        """Async :meth:`classify`."""
        return await self._arun(self._classify(text), timeout)

    def classify_many(
        self, texts: Sequence[str], *, timeout: float | None = None
    ) -> list[SpamClassification]:
        """Classify messages (batches of 64, one deadline); one verdict each, in order."""
        return self.client.run(self._many(list(texts), timeout))

    async def aclassify_many(
        self, texts: Sequence[str], *, timeout: float | None = None
    ) -> list[SpamClassification]:
        """Async :meth:`classify_many`."""
        return await self.client.arun(self._many(list(texts), timeout))

    async def _many(self, texts: list[str], timeout: float | None) -> list[SpamClassification]:
        chunks = [texts[i : i + MAX_BATCH] for i in range(0, len(texts), MAX_BATCH)]
        results = await asyncio.gather(
            *(self.client._call(self.state, self._batch(c), timeout) for c in chunks)
        )
        return [verdict for chunk in results for verdict in chunk]

    def generate_reply(
        self,
        conversation: Conversation,
        persona: str | None = None,
        style: str | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> ScamReply:
        """A simulated reply in a scam conversation (marked simulated, contact points redacted).

        Args:
            conversation: Turns ``{"role": "scammer"|"victim", "text": ...}`` ending with the
                other side's turn, or one text.
            persona: Who replies (``scammer``, ``victim``); the Space's default when None.
            style: ``neutral``, ``urgent``, ``friendly``; the Space's default when None.
            max_new_tokens: Most tokens to generate (the Space caps it at 400).
            temperature: Sampling temperature.
            top_p: Nucleus sampling mass.
            seed: Makes the reply reproducible.
            timeout: This call's deadline in seconds.

        Returns:
            The reply.
        """
        params = _params(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return self._run(self._reply(conversation, persona, style, params), timeout)

    async def agenerate_reply(
        self,
        conversation: Conversation,
        persona: str | None = None,
        style: str | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> ScamReply:
        """Async :meth:`generate_reply`."""
        params = _params(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return await self._arun(self._reply(conversation, persona, style, params), timeout)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
