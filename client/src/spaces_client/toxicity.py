"""``ToxicityClient``: the toxic-classifier Space (Arabic toxicity, harmful/safe).

Paths, in order: Gradio ``/predict`` and ``/predict_batch``; REST ``POST /api/predict`` with
``{"data": [text]}``; the fallbacks. The Inference API fallback (``inference_api: <model id>``)
answers scores only; its raw labels are mapped with ``options.label_map`` and the verdict uses
``options.threshold`` (0.5 unless set), the Space's own rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from spaces_client._base import SpaceClient, validator
from spaces_client.engine import GradioCall, InferenceCall, Request, RestCall
from spaces_client.models import RawScore, Toxicity

#: toxic-classifier's batch limit.
MAX_BATCH = 64
#: Raw label -> canonical label, for Inference API answers (override with options.label_map).
DEFAULT_LABEL_MAP = {
    "LABEL_0": "safe",
    "LABEL_1": "harmful",
    "harmful": "harmful",
    "safe": "safe",
    "toxic": "harmful",
    "non-toxic": "safe",
    "not_toxic": "safe",
    "offensive": "harmful",
    "not_offensive": "safe",
}

_parse_verdict = validator(Toxicity)


def from_scores(
    scores: Sequence[Mapping[str, Any]],
    *,
    threshold: float = 0.5,
    label_map: Mapping[str, str] | None = None,
    model: str | None = None,
) -> Toxicity:
    """A verdict from Inference API text-classification scores ``[{"label", "score"}, ...]``.

    Raises:
        ValueError: A label that the map does not know (the message lists the map's labels).
    """
    mapping = {**DEFAULT_LABEL_MAP, **(label_map or {})}
    canonical: dict[str, float] = {"harmful": 0.0, "safe": 0.0}
    for item in scores:
        label = str(item["label"])
        if label not in mapping:
            raise ValueError(
                f"label {label!r} is not in the label map ({', '.join(sorted(mapping))}): set "
                "options.label_map"
            )
        canonical[mapping[label]] += float(item["score"])
    if canonical["safe"] == 0.0 and len(scores) == 1:  # top_k=1: the other is the rest
        canonical["safe"] = max(0.0, 1.0 - canonical["harmful"])
    label = "harmful" if canonical["harmful"] >= threshold else "safe"
    return Toxicity(
        label=label,
        score=canonical[label],
        scores=canonical,
        threshold=threshold,
        model=model,
        raw=[RawScore(label=str(s["label"]), score=float(s["score"])) for s in scores],
    )


def _inference(options: Mapping[str, Any], model: str, text: str) -> InferenceCall[Toxicity]:
    def parse(answer: Any) -> Toxicity:
        scores = answer[0] if answer and isinstance(answer[0], list) else answer
        return from_scores(
            scores,
            threshold=float(options.get("threshold", 0.5)),
            label_map=options.get("label_map"),
            model=model,
        )

    return InferenceCall({"inputs": text}, parse)


class ToxicityClient(SpaceClient):
    """Typed client of the toxic-classifier Space.

    ``ToxicityClient("owner/toxic-classifier")``, ``ToxicityClient("http://127.0.0.1:7861")``,
    or ``SpacesClient(...).toxicity()`` for the configured one. Sync methods and their
    ``a``-prefixed async twins share one process-wide client.
    """

    kind = "toxicity"

    def _request(self, text: str) -> Request[Toxicity]:
        return Request(
            name="classify",
            gradio=GradioCall("/predict", (text,)),
            parse_gradio=_parse_verdict,
            rest=RestCall("POST", "/api/predict", json={"data": [text]}),
            parse_rest=lambda body: _parse_verdict(body["data"][0]),
            local_args=(text,),
            parse_local=_parse_verdict,
            inference=lambda options, model: _inference(options, model, text),
        )

    def _batch_request(self, texts: list[str]) -> Request[list[Toxicity]]:
        def many(values: Any) -> list[Toxicity]:
            verdicts = [_parse_verdict(v) for v in values]
            if len(verdicts) != len(texts):
                raise ValueError(f"{len(verdicts)} verdicts for {len(texts)} texts")
            return verdicts

        def inference(options: Mapping[str, Any], model: str) -> InferenceCall[list[Toxicity]]:
            def parse(answer: Any) -> list[Toxicity]:
                return [
                    _inference(options, model, t).parse([scores])
                    for t, scores in zip(texts, answer, strict=True)
                ]

            return InferenceCall({"inputs": texts}, parse)

        return Request(
            name="classify_many",
            gradio=GradioCall("/predict_batch", (texts,)),
            parse_gradio=many,
            # The REST route's batch shape gives scores without the verdict: send one
            # {"data": [text]} per text instead, so every path answers the same verdicts.
            rest=tuple(RestCall("POST", "/api/predict", json={"data": [t]}) for t in texts),
            parse_rest=lambda bodies: many([b["data"][0] for b in bodies]),
            local_args=(texts,),
            parse_local=lambda values: [_parse_verdict(v) for v in values],
            inference=inference,
        )

    def probe(self) -> Request[Toxicity]:
        """A one-word classification."""
        return self._request("مرحبا")

    def classify(self, text: str, *, timeout: float | None = None) -> Toxicity:
        """Classify one text.

        Args:
            text: The text (at most 20,000 characters).
            timeout: This call's deadline in seconds (the Space's ``deadline_s`` by default).

        Returns:
            The verdict: label, score, scores, threshold, model, raw, truncated.

        Raises:
            SpaceInputError: The Space refused the text (empty, too long): the message says why.
            SpacesError: The Space and its fallbacks failed (a subclass says how).
        """
        return self._run(self._request(text), timeout)

    async def aclassify(self, text: str, *, timeout: float | None = None) -> Toxicity:
        """Async :meth:`classify`."""
        return await self._arun(self._request(text), timeout)

    def classify_many(
        self, texts: Sequence[str], *, timeout: float | None = None
    ) -> list[Toxicity]:
        """Classify texts (sent in batches of 64, all within one deadline).

        Args:
            texts: The texts.
            timeout: The whole call's deadline in seconds.

        Returns:
            One verdict per text, in order.
        """
        return self.client.run(self._many(list(texts), timeout))

    async def aclassify_many(
        self, texts: Sequence[str], *, timeout: float | None = None
    ) -> list[Toxicity]:
        """Async :meth:`classify_many`."""
        return await self.client.arun(self._many(list(texts), timeout))

    async def _many(self, texts: list[str], timeout: float | None) -> list[Toxicity]:
        chunks = [texts[i : i + MAX_BATCH] for i in range(0, len(texts), MAX_BATCH)]
        results = await asyncio.gather(
            *(self.client._call(self.state, self._batch_request(c), timeout) for c in chunks)
        )
        return [verdict for chunk in results for verdict in chunk]
