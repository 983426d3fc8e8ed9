"""The server ceiling: the real toxic-classifier app with a no-op model.

Imports the Space's ``app`` unchanged, replaces ``ToxicityClassifier.forward`` with a
constant-time stub (fixed probabilities, no model), and serves it exactly as ``app.py`` does;
preprocessing (limits, normalisation, tokenizer) and postprocessing run as in the Space.
Whatever throughput this reaches is what Gradio, the queue, the batcher, preprocessing and
postprocessing allow before the model costs anything.

Environment: as the Space (``MODEL_ID``, ``PRECISION``, ``PORT``, ``HOST``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

SPACE_DIR = Path(__file__).resolve().parents[2] / "spaces" / "toxic-classifier"
sys.path.insert(0, str(SPACE_DIR))

import app as space  # noqa: E402
import predictor  # noqa: E402
from shared.serving import serve  # noqa: E402


def noop_forward(
    self: predictor.ToxicityClassifier, batch: Sequence[predictor.Prepared]
) -> torch.Tensor:
    return torch.full((len(batch), len(self.raw_labels)), 1.0 / len(self.raw_labels))


predictor.ToxicityClassifier.forward = noop_forward  # type: ignore[method-assign]

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    space.service.start_loading()
    serve(
        space.app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "7860")),
    )
