"""Synthetic Twi commands: espeak-ng voices read the utterances, sox and numpy degrade them.

espeak-ng has no Akan voice, so voices of other languages read Twi spelled for them (ɛ -> e,
ɔ -> o: the vowels they can say); the transcript a model learns stays in Twi orthography. Every
clip picks a voice, a variant (speaker timbre), a speed and a pitch, then a channel: clean, a
telephone band, a small room's reverb, or background noise at 5-25 dB SNR. Voices in
:data:`HELD_OUT_VOICES` are never used for training: the evaluation reads them, to estimate how
a model does on voices it has never heard (real speakers will be further still).

Everything is seeded: the same ``seed`` gives the same clips.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
#: Voices the models are trained on (espeak-ng language voices).
TRAIN_VOICES = ("sw", "en-029", "tn", "ht", "id", "it", "pt", "de", "es", "nl")
#: Voices kept out of training, read only by the evaluation.
HELD_OUT_VOICES = ("ms", "fr-fr", "en-us", "pl")
#: Speaker variants (espeak-ng ``+variant``); the held-out voices use them too.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "croak", "klatt2")
#: Channels a clip may go through.
CHANNELS = ("clean", "telephone", "reverb", "noise")


@dataclass(frozen=True)
class Voice:
    """How one clip is spoken."""

    # espeak-ng language voice.
    language: str
    # espeak-ng variant (timbre).
    variant: str
    # Words per minute.
    speed: int
    # Pitch, 0-99.
    pitch: int
    # One of CHANNELS.
    channel: str
    # Signal-to-noise ratio in dB for the "noise" channel.
    snr_db: float

    @property
    def name(self) -> str:
        """``language+variant``, as espeak-ng's ``-v`` takes it."""
        return f"{self.language}+{self.variant}"


def speakable(text: str) -> str:
    """Twi spelled for voices of other languages: open vowels as their closest letters."""
    text = unicodedata.normalize("NFC", text)
    table = str.maketrans({"ɛ": "e", "Ɛ": "E", "ɔ": "o", "Ɔ": "O", "ŋ": "ng", "Ŋ": "Ng"})
    return text.translate(table)


def random_voice(rng: random.Random, languages: Sequence[str]) -> Voice:
    """A voice drawn from ``languages`` with a random variant, speed, pitch and channel."""
    return Voice(
        language=rng.choice(languages),
        variant=rng.choice(VARIANTS),
        speed=rng.randint(130, 190),
        pitch=rng.randint(25, 75),
        channel=rng.choices(CHANNELS, weights=(4, 2, 2, 3))[0],
        snr_db=rng.uniform(5.0, 25.0),
    )


def require_tools() -> None:
    """Fail with the install command when espeak-ng or sox is missing."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: install with `apt-get install espeak-ng sox` "
            "(or `make system`)"
        )


def speak(text: str, voice: Voice, seed: int) -> np.ndarray:
    """One clip: ``text`` read by ``voice``, as float32 samples at 16 kHz mono.

    Args:
        text: The utterance, in Twi orthography.
        voice: Who reads it and through which channel.
        seed: Seeds the noise of the "noise" channel.

    Returns:
        Samples in [-1, 1], shape ``(n,)``.
    """
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch),
             "-w", str(raw), speakable(text)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        effects: list[str] = []
        if voice.channel == "telephone":
            effects = ["sinc", "300-3400", "gain", "-n", "-3"]
        elif voice.channel == "reverb":
            effects = ["reverb", "35", "50", "60", "gain", "-n", "-3"]
        # Silence around the speech, as a recording has.
        effects += ["pad", "0.15", "0.25"]
        subprocess.run(
            ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), *effects],
            check=True,
            capture_output=True,
            timeout=30,
        )
        samples = _read_wav(out)
    if voice.channel == "noise":
        samples = add_noise(samples, voice.snr_db, np.random.default_rng(seed))
    return samples


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Pink-ish background noise at ``snr_db`` below the speech's power."""
    white = rng.standard_normal(samples.shape[0] + 1).astype(np.float32)
    noise = np.diff(np.cumsum(white) * 0.02) + 0.5 * white[1:]  # tilted towards low frequencies
    speech_power = float(np.mean(samples**2)) or 1e-8
    noise *= np.sqrt(speech_power / (float(np.mean(noise**2)) * 10 ** (snr_db / 10)))
    return np.clip(samples + noise, -1.0, 1.0).astype(np.float32)


def _read_wav(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


@dataclass(frozen=True)
class Clip:
    """One synthetic recording of an utterance."""

    # The utterance (the transcript a model should write).
    text: str
    # Its intent.
    intent: str
    # 16 kHz mono samples.
    audio: np.ndarray
    # Who read it.
    voice: Voice


def render(
    utterances: Sequence[tuple[str, str]],
    *,
    languages: Sequence[str],
    per_utterance: int,
    seed: int,
) -> Iterator[Clip]:
    """Read each ``(text, intent)`` ``per_utterance`` times, each time in a random voice.

    Args:
        utterances: ``(text, intent)`` pairs.
        languages: The espeak-ng voices to draw from (train or held-out).
        per_utterance: Clips per utterance.
        seed: Seeds every choice; the same seed gives the same clips.

    Yields:
        The clips, utterance by utterance.
    """
    require_tools()
    rng = random.Random(seed)
    for text, intent in utterances:
        for _ in range(per_utterance):
            voice = random_voice(rng, languages)
            yield Clip(text, intent, speak(text, voice, rng.randrange(2**31)), voice)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write float32 samples as a 16-bit 16 kHz mono WAV (what a user would upload)."""
    import wave

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
