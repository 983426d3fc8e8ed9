"""Decode uploaded audio of any common container to mono float32 samples with ffmpeg.

Follows openai/whisper's ``audio.load_audio``: ffmpeg runs as a subprocess on the file and writes
raw 16-bit PCM to stdout, so every format ffmpeg knows works without Python codecs. Uploads are
untrusted, so the decoder is boxed in: a size cap before ffmpeg starts, a whitelist of audio
containers and of I/O protocols (no playlists, no URLs), a wall-clock timeout, and a duration cap
that stops decoding early instead of filling memory.

A WAV file that is already what ffmpeg would write (16-bit PCM, one channel, at the requested
rate) is read in process instead, by the standard library's ``wave``: ffmpeg would only copy its
samples, and starting it costs tens of milliseconds, more than a short command's VAD and intent
together. Every other file, and any WAV that ``wave`` does not read, goes to ffmpeg.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import stat
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import InputError

logger = logging.getLogger(__name__)

# Demuxers ffmpeg may pick: audio containers only. Keeps ffmpeg from treating an upload as an
# HLS/concat playlist (which can read other files or URLs) or as an image or a video format.
_FORMAT_WHITELIST = ",".join(
    (
        "wav", "w64", "mp3", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "3gp", "flac",
        "aac", "aiff", "caf", "amr", "asf", "au", "wv",
    )
)  # fmt: skip
# Lossy encoders pad the end (mp3 and aac by up to ~50 ms), so a clip recorded at exactly the
# limit decodes slightly over it. Audio within this margin is trimmed, not rejected.
_PADDING_TOLERANCE_S = 0.1
_DURATION_RE = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_INSTALL_HINT = (
    "ffmpeg is not installed or not on PATH: install it (e.g. `apt-get install ffmpeg`, or add "
    "`ffmpeg` to the Space's packages.txt)"
)


class AudioError(RuntimeError):
    """The machine cannot decode audio at all (ffmpeg is missing)."""


class AudioInputError(InputError):
    """The uploaded audio is empty, too large, too long, or not decodable."""


@dataclass(frozen=True)
class AudioLimits:
    """Limits applied to every decode, so one upload cannot exhaust the server."""

    max_seconds: float = 30.0  # longest audio accepted (or kept, with truncate=True)
    timeout_s: float = 30.0  # wall-clock limit for the ffmpeg process; it is killed after it
    max_bytes: int = 25 * 2**20  # largest encoded input accepted, checked before decoding

    def __post_init__(self) -> None:
        for name in ("max_seconds", "timeout_s", "max_bytes"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"AudioLimits.{name} must be positive, got {value!r}")


def decode_audio(
    source: bytes | str | os.PathLike[str],
    *,
    sample_rate: int = 16_000,
    limits: AudioLimits = AudioLimits(),
    truncate: bool = False,
) -> np.ndarray:
    """Decode an audio file to mono float32 samples in [-1, 1].

    Any container and codec ffmpeg reads is accepted, among them wav, mp3, ogg (vorbis or opus),
    webm (opus), m4a (aac) and flac. Channels are averaged to mono and resampled.

    Args:
        source: the encoded file, as bytes or as a path (bytes are written to a private
            temporary file first, so ffmpeg can seek in them).
        sample_rate: output sample rate in Hz.
        limits: size, duration and time limits.
        truncate: keep the first ``limits.max_seconds`` of longer audio instead of rejecting it.
            Either way, up to 0.1 s over the limit (encoder padding) is trimmed silently.

    Returns:
        A 1-D ``float32`` array of ``sample_rate`` samples per second, at most
        ``limits.max_seconds`` long.

    Raises:
        AudioInputError: the audio is empty, over ``limits.max_bytes``, longer than
            ``limits.max_seconds`` (unless ``truncate``), not an audio file, has no audio
            stream or no samples, or took longer than ``limits.timeout_s`` to decode.
        AudioError: ffmpeg is not installed.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    # Decode a little past what is allowed, and no more: enough to tell "too long" without
    # decoding (and holding) the rest of an hour-long file.
    keep_seconds = limits.max_seconds + (0.0 if truncate else _PADDING_TOLERANCE_S + 0.01)

    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(len(data), limits)
        plain = _plain_wav(data, sample_rate)
        if plain is not None:
            return _checked(plain, sample_rate, limits, truncate, plain.size / sample_rate)
        # A private temporary file rather than a pipe: ffmpeg cannot seek on a pipe, which
        # loses the duration of wav/mp3/ogg (needed for the too-long message) and breaks
        # m4a/mp4 whose index sits at the end of the file.
        with tempfile.TemporaryDirectory(prefix="audio-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            output, log = _run_ffmpeg(path, keep_seconds, sample_rate, limits)
    elif isinstance(source, str | os.PathLike):
        path = Path(source).resolve()
        try:
            info = path.stat()
        except FileNotFoundError as e:
            raise AudioInputError(f"audio file not found: {path}; upload it again") from e
        if not stat.S_ISREG(info.st_mode):
            raise AudioInputError(f"audio path is not a regular file: {path}")
        _check_size(info.st_size, limits)
        with path.open("rb") as f:
            riff = _is_riff_wave(f.read(12))
        plain = _plain_wav(path.read_bytes(), sample_rate) if riff else None
        if plain is not None:
            return _checked(plain, sample_rate, limits, truncate, plain.size / sample_rate)
        output, log = _run_ffmpeg(path, keep_seconds, sample_rate, limits)
    else:
        raise TypeError(f"source must be bytes or a path, not {type(source).__name__}")

    # s16le frames are 2 bytes; do not trust a subprocess to stop on a frame boundary.
    pcm = np.frombuffer(output[: len(output) // 2 * 2], dtype=np.int16)
    return _checked(pcm, sample_rate, limits, truncate, _header_duration(log))


def _checked(
    pcm: np.ndarray,
    sample_rate: int,
    limits: AudioLimits,
    truncate: bool,
    duration: float | None,
) -> np.ndarray:
    """int16 samples to float32 in [-1, 1), checked against the limits; ``duration`` is the
    whole file's, for the too-long message (None when unknown)."""
    max_samples = round(limits.max_seconds * sample_rate)
    if pcm.size == 0:
        raise AudioInputError("could not decode audio: the file contains no samples")
    if pcm.size > max_samples + round(_PADDING_TOLERANCE_S * sample_rate) and not truncate:
        raise AudioInputError(_too_long_message(duration, limits.max_seconds))
    pcm = pcm[:max_samples]
    samples = pcm.astype(np.float32) / 32768.0  # int16 -> [-1, 1)
    logger.debug("decoded %.2f s of audio at %d Hz", samples.size / sample_rate, sample_rate)
    return samples


def _is_riff_wave(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def _plain_wav(data: bytes, sample_rate: int) -> np.ndarray | None:
    """The samples of a WAV file ffmpeg would only copy (16-bit PCM, mono, at ``sample_rate``),
    or None for any other file."""
    if not _is_riff_wave(data[:12]):
        return None
    try:
        with wave.open(io.BytesIO(data)) as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, sample_rate):
                return None
            expected = w.getnframes()
            frames = w.readframes(expected)
    except Exception:  # a WAV wave does not read (float, extensible, damaged): ffmpeg's call
        return None
    if expected == 0 or len(frames) != 2 * expected:  # a streamed or cut header: ffmpeg's call
        return None
    return np.frombuffer(frames, dtype="<i2")


def audio_duration(samples: np.ndarray, sample_rate: int) -> float:
    """Length of decoded audio in seconds.

    Args:
        samples: samples with time on the last axis, e.g. the output of :func:`decode_audio`.
        sample_rate: their sample rate in Hz.

    Returns:
        The duration in seconds.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    return samples.shape[-1] / sample_rate


def _check_size(n_bytes: int, limits: AudioLimits) -> None:
    if n_bytes == 0:
        raise AudioInputError("audio is empty")
    if n_bytes > limits.max_bytes:
        raise AudioInputError(
            f"audio file is {_format_size(n_bytes)}; the limit is "
            f"{_format_size(limits.max_bytes)}: upload a shorter or more compressed file"
        )


def _format_size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _run_ffmpeg(
    path: Path,
    keep_seconds: float,
    sample_rate: int,
    limits: AudioLimits,
) -> tuple[bytes, list[str]]:
    """Run ffmpeg on one file; returns raw s16le mono PCM and ffmpeg's log lines."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-nostats",
        # "info" so the log carries the container's Duration, used in the too-long message.
        "-loglevel", "info",
        "-protocol_whitelist", "file",
        "-format_whitelist", _FORMAT_WHITELIST,
        # "file:" stops ffmpeg from reading a name such as "http://..." as a URL.
        "-i", f"file:{path}",
        "-map", "0:a:0",
        "-t", f"{keep_seconds:.6f}",
        "-ac", "1", "-ar", str(sample_rate),
        "-f", "s16le", "-acodec", "pcm_s16le",
        "pipe:1",
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as e:
        raise AudioError(_INSTALL_HINT) from e
    try:
        output, err = proc.communicate(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.communicate()
        logger.warning("ffmpeg timed out after %s s; killed it", limits.timeout_s)
        raise AudioInputError(
            f"could not decode audio: decoding took longer than {limits.timeout_s:g} s; the "
            "file may be damaged: re-encode it (e.g. as wav or mp3) and upload it again"
        ) from e
    log = err.decode("utf-8", errors="replace").splitlines()
    if proc.returncode != 0:
        no_stream = next((line.strip() for line in log if "matches no streams" in line), None)
        if no_stream is not None:
            raise AudioInputError(
                f"could not decode audio: the file has no audio stream (ffmpeg: {no_stream})"
            )
        last = next((line.strip() for line in reversed(log) if line.strip()), "no output")
        last = last.removeprefix(f"file:{path}: ")  # the temporary path means nothing to users
        raise AudioInputError(
            f"could not decode audio: not a recognised audio file (ffmpeg: {last})"
        )
    return output, log


def _too_long_message(duration: float | None, max_seconds: float) -> str:
    if duration is not None and duration > max_seconds:
        # Rounded up, so a file just over the limit never reads as "30.0 s; the limit is 30 s".
        length = f"{math.ceil(duration * 10) / 10:.1f} s long"
    else:  # no (believable) duration in the header, as in streamed webm
        length = "longer than the limit"
    return f"audio is {length}; the limit is {max_seconds:g} s: upload a shorter clip"


def _header_duration(log: list[str]) -> float | None:
    """The container's declared duration from ffmpeg's log, in seconds, if it has one."""
    for line in log:
        match = _DURATION_RE.search(line)
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None
