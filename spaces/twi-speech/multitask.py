"""Whisper with an intent head: transcript and intent from one encoder pass.

``WhisperForMultiTask`` is a ``WhisperForConditionalGeneration`` plus a small head over the
encoder's output: attention pooling over the frames (silence padding gets no weight once
trained), a layer norm and a linear layer to the intents. Its ``config.json`` says what it is
(``custom_model: "WhisperForMultiTask"``, ``task_types``, ``num_labels``, ``id2label``), which is
how the Space tells it from a plain Whisper.

At serving time the Whisper part runs in CTranslate2 (int8) and the head runs on the
CTranslate2 encoder's output, in numpy: :class:`IntentHead` holds the head's weights, read from
the model's safetensors without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig, WhisperForConditionalGeneration

CUSTOM_MODEL = "WhisperForMultiTask"
TASK_TYPES = ["transcription", "classification"]
HEAD_PREFIX = "intent_head."


class IntentPooling(nn.Module):
    """Attention pooling of encoder frames, then layer norm and a linear layer to the labels."""

    def __init__(self, d_model: int, num_labels: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, frames, d_model) encoder states -> (batch, num_labels) logits."""
        weights = torch.softmax(self.score(hidden).squeeze(-1), dim=-1)  # (batch, frames)
        pooled = torch.einsum("bf,bfd->bd", weights, hidden)  # (batch, d_model)
        return self.classifier(self.norm(pooled))


class WhisperForMultiTask(WhisperForConditionalGeneration):
    """Whisper for transcription plus an intent classifier over the same encoder output."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__(config)
        self.intent_head = IntentPooling(config.d_model, config.num_labels)
        self.post_init()

    def intent_logits(self, encoder_hidden: torch.Tensor) -> torch.Tensor:
        """(batch, frames, d_model) encoder output -> (batch, num_labels) intent logits."""
        return self.intent_head(encoder_hidden)

    def multitask_loss(
        self,
        input_features: torch.Tensor,
        labels: torch.Tensor,
        intents: torch.Tensor,
        *,
        intent_weight: float = 1.0,
        encoder_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transcription and intent losses from one encoder pass.

        Args:
            input_features: (batch, n_mels, frames) log-mel features.
            labels: (batch, tokens) decoder targets, -100 where padded; the first token is the
                decoder start (``<|startoftranscript|>``), as the prompt is.
            intents: (batch,) intent ids.
            intent_weight: Weight of the intent loss in the sum.
            encoder_hidden: The encoder's output for ``input_features`` when the caller has
                already computed it (for a loss of its own on it); computed here otherwise.

        Returns:
            The summed loss, the transcription loss and the intent loss.
        """
        encoder = encoder_hidden
        if encoder is None:
            encoder = self.model.encoder(input_features).last_hidden_state  # (batch, frames, d)
        decoder_input = labels[:, :-1].clamp(min=0)
        targets = labels[:, 1:]
        out = self.model.decoder(input_ids=decoder_input, encoder_hidden_states=encoder)
        logits = self.proj_out(out.last_hidden_state)  # (batch, tokens - 1, vocab)
        asr = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
        intent = nn.functional.cross_entropy(self.intent_logits(encoder), intents)
        return asr + intent_weight * intent, asr, intent


def log_mel(extractor: Any, clips: Sequence[np.ndarray]) -> np.ndarray:
    """(clips, n_mels, frames) Whisper input features, computed the way faster-whisper does.

    ``extractor`` is faster-whisper's ``FeatureExtractor`` (a model's ``feature_extractor``):
    each clip's first window is turned into a log-mel spectrogram, then padded to the window
    with zeros in feature space, as faster-whisper's ``pad_or_trim`` does. Training calls this
    too, so that a model trained here is fed at serving time exactly what it learned from.
    """
    frames = extractor.nb_max_frames
    feats = []
    for clip in clips:
        mel = extractor(clip[: extractor.n_samples])[:, :frames]  # (n_mels, <= frames)
        feats.append(np.pad(mel, ((0, 0), (0, frames - mel.shape[1]))))
    return np.stack(feats).astype(np.float32)


def is_multitask(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` describes a multi-task Whisper (see the module docstring)."""
    return config.get("custom_model") == CUSTOM_MODEL or (
        "classification" in (config.get("task_types") or [])
        and str(config.get("model_type")) == "whisper"
    )


@dataclass(frozen=True)
class IntentHead:
    """The intent head's weights, applied in numpy to an encoder output."""

    # (d_model,) and () pooling score weights.
    score_w: np.ndarray
    score_b: np.ndarray
    # (d_model,) layer norm scale and shift.
    norm_w: np.ndarray
    norm_b: np.ndarray
    # (num_labels, d_model) and (num_labels,) classifier.
    cls_w: np.ndarray
    cls_b: np.ndarray
    # Layer norm epsilon.
    eps: float = 1e-5

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> IntentHead:
        """From a state dict holding ``intent_head.*`` tensors (as numpy arrays)."""
        get = {k[len(HEAD_PREFIX) :]: v.astype(np.float32) for k, v in state.items()
               if k.startswith(HEAD_PREFIX)}  # fmt: skip
        missing = {"score.weight", "score.bias", "norm.weight", "norm.bias",
                   "classifier.weight", "classifier.bias"} - set(get)  # fmt: skip
        if missing:
            raise KeyError(f"the intent head lacks {sorted(missing)}")
        return cls(get["score.weight"][0], get["score.bias"][0], get["norm.weight"],
                   get["norm.bias"], get["classifier.weight"], get["classifier.bias"])  # fmt: skip

    @classmethod
    def load(cls, weights: Path) -> IntentHead:
        """From a model's ``model.safetensors``."""
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(HEAD_PREFIX)}  # noqa: SIM118
        return cls.from_state(state)

    @property
    def num_labels(self) -> int:
        """Intents the head tells apart."""
        return int(self.cls_b.shape[0])

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """(batch, frames, d_model) encoder output -> (batch, num_labels) logits."""
        scores = hidden @ self.score_w + self.score_b  # (batch, frames)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = scores / scores.sum(axis=-1, keepdims=True)
        pooled = np.einsum("bf,bfd->bd", weights, hidden)  # (batch, d_model)
        mean = pooled.mean(axis=-1, keepdims=True)
        var = pooled.var(axis=-1, keepdims=True)
        normed = (pooled - mean) / np.sqrt(var + self.eps) * self.norm_w + self.norm_b
        return normed @ self.cls_w.T + self.cls_b
