"""What the reader's output means, without torch: its alphabet, input size and CTC decoding.

The serving path (``predictor.py``) needs only this and ONNX Runtime; ``crnn.py`` (the network,
torch) is imported to train, or to export a ``.pth`` state dict to ONNX.
"""

from __future__ import annotations

import string

import numpy as np

#: Index 0 is the CTC blank; character i is ALPHABET[i - 1].
ALPHABET = string.digits + string.ascii_uppercase
DIGITS_ONLY = string.digits
HEIGHT = 32  # input rows: crops are scaled to this height, keeping their aspect
MAX_WIDTH = 320  # crops wider than this (long rows at small heights) are squeezed to it
DOWNSAMPLE = 4  # input columns per output time step


def greedy_decode(log_probs: np.ndarray, allowed: str) -> tuple[str, list[float]]:
    """Greedy CTC decoding of one crop, keeping only the characters in ``allowed``.

    Args:
        log_probs: ``(time, 1 + len(ALPHABET))`` log-probabilities (blank first).
        allowed: The characters the field may hold.

    Returns:
        The text, and each character's confidence: the highest probability of that character
        over the frames it was read in, with the probabilities renormalised over the blank
        and the allowed characters.
    """
    keep = np.zeros(log_probs.shape[-1], dtype=bool)
    keep[0] = True
    keep[[1 + ALPHABET.index(c) for c in allowed]] = True
    logits = np.where(keep, log_probs, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)  # (time, classes)
    best = probs.argmax(-1)
    text: list[str] = []
    confidences: list[float] = []
    previous = 0
    for t, k in enumerate(best):
        if k != 0 and k != previous:
            text.append(ALPHABET[k - 1])
            confidences.append(float(probs[t, k]))
        elif k != 0:  # the same character on its next frame
            confidences[-1] = max(confidences[-1], float(probs[t, k]))
        previous = k
    return "".join(text), confidences
