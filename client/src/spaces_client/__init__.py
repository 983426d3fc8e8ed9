"""Backend client for this repo's Hugging Face Spaces: typed results, a Space's whole life
(sleeping, building, overloaded) handled within one deadline, transport fallback, a circuit
breaker per Space, one shared client per process, sync and asyncio.

```python
from spaces_client import SpacesClient

spaces = SpacesClient.from_env()  # SPACES_TOXICITY=org/toxic-classifier, ...
verdict = spaces.toxicity().classify("مرحبا")  # Toxicity(label="safe", score=..., ...)
```
"""

from spaces_client._base import SpaceClient, default_client
from spaces_client.answer_sheet import AnswerSheetClient
from spaces_client.breaker import BreakerState, CircuitBreaker
from spaces_client.config import (
    BreakerSettings,
    ClientSettings,
    FallbackSettings,
    RetrySettings,
    SpaceSettings,
)
from spaces_client.engine import SpacesClient
from spaces_client.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    GenerationError,
    SpaceAuthError,
    SpaceContractError,
    SpaceInputError,
    SpaceLoadingError,
    SpaceModelError,
    SpaceNotFoundError,
    SpaceOverloadedError,
    SpacesError,
    SpaceStageError,
    SpaceUnavailableError,
    SpaceWakingError,
    StreamInterrupted,
    StructureError,
)
from spaces_client.models import (
    AnswerSheet,
    Generation,
    Health,
    IntentPrediction,
    ModelInfo,
    RawScore,
    ScamReply,
    SheetField,
    SpaceCheck,
    SpamClassification,
    SpeechIntent,
    Toxicity,
    WhisperInfo,
)
from spaces_client.refs import SpaceRef, resolve_space
from spaces_client.spam import SpamClient
from spaces_client.tiers import TiersClient
from spaces_client.toxicity import ToxicityClient
from spaces_client.twi_speech import TwiSpeechClient

__version__ = "0.1.0"

__all__ = [
    "AnswerSheet",
    "AnswerSheetClient",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientSettings",
    "DeadlineExceeded",
    "FallbackSettings",
    "Generation",
    "GenerationError",
    "Health",
    "IntentPrediction",
    "ModelInfo",
    "RawScore",
    "RetrySettings",
    "ScamReply",
    "SheetField",
    "SpaceAuthError",
    "SpaceCheck",
    "SpaceClient",
    "SpaceContractError",
    "SpaceInputError",
    "SpaceLoadingError",
    "SpaceModelError",
    "SpaceNotFoundError",
    "SpaceOverloadedError",
    "SpaceRef",
    "SpaceSettings",
    "SpaceStageError",
    "SpaceUnavailableError",
    "SpaceWakingError",
    "SpacesClient",
    "SpacesError",
    "SpamClassification",
    "SpamClient",
    "SpeechIntent",
    "StreamInterrupted",
    "StructureError",
    "TiersClient",
    "Toxicity",
    "ToxicityClient",
    "TwiSpeechClient",
    "WhisperInfo",
    "default_client",
    "resolve_space",
]
