"""The typed results: one pydantic model per Space answer, whichever transport gave it.

Fields follow each Space's README (or, for the Spaces not built yet, their issue's documented
contract); unknown extra fields are kept (``extra="allow"``) so a newer Space does not break an
older client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_OPEN = ConfigDict(extra="allow")


class RawScore(BaseModel):
    """A model's own label and its probability."""

    model_config = _OPEN

    # The model's raw label ("LABEL_1", "toxic", ...).
    label: str
    # Its probability.
    score: float


class Toxicity(BaseModel):
    """toxic-classifier's verdict for one text."""

    model_config = _OPEN

    # "harmful" iff p(harmful) >= threshold.
    label: Literal["harmful", "safe"]
    # Probability of `label`.
    score: float
    # Probability of each canonical label.
    scores: dict[str, float]
    # The threshold applied to p(harmful).
    threshold: float
    # The model that answered ("id@revision"), None when the answer did not say.
    model: str | None = None
    # The model's raw labels and probabilities.
    raw: list[RawScore] = []
    # Whether the text was cut to the model's maximum length.
    truncated: bool = False

    @property
    def harmful(self) -> bool:
        """Whether the verdict is ``harmful``."""
        return self.label == "harmful"


class SpamClassification(BaseModel):
    """spam-mistral's classification of one message."""

    model_config = _OPEN

    # "spam" iff calibrated p(spam) >= the Space's threshold.
    classification: Literal["spam", "not_spam"]
    # Probability of `classification`.
    confidence: float
    # Probability of each label.
    probabilities: dict[str, float]
    # The model that answered.
    model: str | None = None
    # Whether the message was cut to the model's maximum length.
    truncated: bool = False

    @property
    def spam(self) -> bool:
        """Whether the message is spam."""
        return self.classification == "spam"


class ScamReply(BaseModel):
    """spam-mistral's simulated reply in a scam conversation (always marked as simulated)."""

    model_config = _OPEN

    # The reply, contact points redacted ([LINK], [PHONE], ...).
    reply: str
    # Who replied ("scammer" or "victim").
    persona: str
    # In which style ("neutral", "urgent", "friendly").
    style: str
    # Why generation stopped ("eos_token", "length", ...).
    finish_reason: str | None = None
    # Always true: the reply is a simulation.
    simulated: bool = True
    # Placeholder -> how many contact points it replaced.
    redacted: dict[str, int] = {}
    # The notice shown with a simulated reply.
    notice: str | None = None


class Generation(BaseModel):
    """llm-tiers' completion of one prompt."""

    model_config = _OPEN

    # The generated text (without the prompt).
    text: str
    # The tier that was asked.
    tier: str
    # Why generation stopped, when the route said ("length", "eos_token", "stop_sequence").
    finish_reason: str | None = None
    # Tokens generated, when the route said.
    generated_tokens: int | None = None


class SheetField(BaseModel):
    """One field read from an answer sheet (register number, subject code)."""

    model_config = _OPEN

    # The value read, None when nothing could be read.
    value: str | None = None
    # Confidence in [0, 1].
    confidence: float = 0.0
    # Per-character readings (each with its own value, confidence and box).
    characters: list[Any] = []
    # Where the field is on the page ([x0, y0, x1, y1] in pixels), when found.
    box: list[float] | None = None
    # Whether the value passes the field's check (length, checksum, known codes).
    valid: bool = False


class AnswerSheet(BaseModel):
    """answer-sheet-ml's reading of a scanned answer sheet (issue contract: written before the
    Space exists)."""

    model_config = _OPEN

    # The student's register number.
    register_number: SheetField
    # The exam's subject code.
    subject_code: SheetField
    # Whether a person should check the reading (low confidence or invalid value).
    needs_review: bool = False
    # Degrees the page was rotated to read it.
    rotation: float = 0
    # The page the fields were read from (1-based).
    page: int = 1
    # Pages in the document.
    pages: int = 1
    # Server-side processing time in milliseconds.
    processing_ms: float | None = None
    # The models used, by role.
    models: dict[str, Any] = {}


class IntentPrediction(BaseModel):
    """One ranked intent."""

    model_config = _OPEN

    # The intent's name.
    intent: str
    # Its probability.
    confidence: float
    # Its index in the model's label list.
    index: int | None = None


class WhisperInfo(BaseModel):
    """How the speech was transcribed."""

    model_config = _OPEN

    # Whisper model size ("small", ...).
    model_size: str | None = None
    # The language token used, if any (Whisper has none for Twi).
    language: str | None = None
    # Confidence of the transcription.
    transcription_confidence: float | None = None


class SpeechIntent(BaseModel):
    """twi-speech's intent recognised in one recording (issue contract: written before the
    Space exists)."""

    model_config = _OPEN

    # The uploaded file's name.
    filename: str | None = None
    # The most likely intent.
    intent: str
    # Its probability.
    confidence: float
    # The transcription.
    transcription: str | None = None
    # Server-side processing time in milliseconds.
    processing_time_ms: float | None = None
    # The top intents, best first.
    top_predictions: list[IntentPrediction] = []
    # Which classifier answered.
    model_type: str | None = None
    # Transcription details.
    whisper_info: WhisperInfo | None = None
    # Whether the recording held no speech.
    no_speech: bool = False


class ModelInfo(BaseModel):
    """One loaded model in a Space's ``/health``."""

    model_config = _OPEN

    # Hub id or local path.
    id: str | None = None
    # Revision, None for the default branch or a local folder.
    revision: str | None = None
    # Device ("cpu", "cuda").
    device: str | None = None
    # Precision ("int8", "fp32", ...).
    precision: str | None = None
    # Whether these are offline demo weights.
    demo: bool | None = None
    # Seconds it took to load.
    load_s: float | None = None


class Health(BaseModel):
    """A Space's ``/health`` body (the serving contract)."""

    model_config = _OPEN

    # "ok", "loading" or "error".
    status: str
    # The Space's name.
    space: str | None = None
    # Seconds since the Space started.
    uptime_s: float | None = None
    # Loaded models by role (llm-tiers: by tier).
    models: dict[str, ModelInfo] = {}
    # Configured models that load on first use.
    not_loaded: list[str] = []
    # Why it failed to load, with status "error".
    error: str | None = None


class SpaceCheck(BaseModel):
    """One row of ``spaces-client check``."""

    # The configuration key.
    key: str
    # The typed client kind.
    kind: str
    # The app URL.
    url: str
    # The Hub's runtime stage; None when not asked (a local URL) or unknown.
    stage: str | None = None
    # /health's status ("ok", "loading", "error") or why it did not answer.
    health: str | None = None
    # /health's models.
    models: dict[str, ModelInfo] = {}
    # The round-trip's latency in milliseconds, None when it failed.
    latency_ms: float | None = None
    # Whether the Space is up and answered the round-trip.
    ok: bool = False
    # Why not, when not ok.
    reason: str | None = None
    # Which fallback answered the round-trip, when the Space itself did not.
    detail: str | None = Field(default=None, exclude=True)
