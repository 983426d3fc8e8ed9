"""The CRNN field reader (Shi et al. 2015): convolutions, a bidirectional LSTM, CTC.

One reader serves both fields: it knows every character of :data:`ctc.ALPHABET`, and decoding
(:func:`ctc.greedy_decode`) keeps only the characters the field allows, so a doubtful
``0``/``O`` in a register number is read as the digit. Training: ``training/train_reader.py``.
Serving runs the ONNX export (:func:`export_onnx`); a PyTorch state dict of this architecture
(``.pth``) loads too (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ctc import ALPHABET, HEIGHT, MAX_WIDTH


def _block(c_in: int, c_out: int, pool: tuple[int, int] | None) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(pool, pool))
    return layers


class CRNN(nn.Module):
    """Grayscale crop ``(batch, 1, 32, width)`` -> log-probabilities ``(batch, width / 4,
    1 + len(ALPHABET))``."""

    def __init__(self, n_classes: int = 1 + len(ALPHABET), hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(1, 32, (2, 2)),  # (32, 16, W/2)
            *_block(32, 64, (2, 2)),  # (64, 8, W/4)
            *_block(64, 96, None),
            *_block(96, 96, (2, 1)),  # (96, 4, W/4)
            *_block(96, 128, (2, 1)),  # (128, 2, W/4)
            nn.Conv2d(128, 128, (2, 1), bias=False),  # (128, 1, W/4)
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
        )
        self.rnn = nn.LSTM(128, hidden, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 1, 32, width), white = 1.0, ink = 0.0
        f = self.features(1.0 - x).squeeze(2).transpose(1, 2)  # (batch, width / 4, 128)
        out, _ = self.rnn(f)  # (batch, width / 4, 2 * hidden)
        return self.head(out).log_softmax(-1)  # (batch, width / 4, classes)


def load_state_dict(path: str | Path) -> CRNN:
    """A CRNN from a state dict file (``.pth``/``.pt``), read with ``weights_only=True``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = CRNN()
    model.load_state_dict(state)
    return model.eval()


def export_onnx(model: CRNN, path: str | Path) -> Path:
    """Write the reader as ONNX (dynamic batch and width), with the alphabet in its metadata."""
    import onnx

    path = Path(path)
    model = model.eval()
    example = torch.ones(1, 1, HEIGHT, 160)  # batch 1: the LSTM export stays batch-free
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["log_probs"],
        dynamic_axes={"image": {0: "batch", 3: "width"}, "log_probs": {0: "batch", 1: "time"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    meta = {"alphabet": ALPHABET, "height": str(HEIGHT), "max_width": str(MAX_WIDTH)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path
