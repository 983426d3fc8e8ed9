"""Tests for shared.audio: fixtures are generated at test time with ffmpeg (1 s of 440 Hz)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.audio import AudioError, AudioInputError, AudioLimits, audio_duration, decode_audio

SINE_HZ = 440
SINE_AMPLITUDE = 0.125  # lavfi's sine source default: 1/8 of full scale
CONTAINERS = {  # file extension -> ffmpeg encoder
    "wav": "pcm_s16le",
    "mp3": "libmp3lame",
    "ogg": "libvorbis",
    "opus": "libopus",
    "webm": "libopus",
    "m4a": "aac",
    "flac": "flac",
}


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed: run `apt-get install ffmpeg` (the setup step does)")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _make(path: Path, source: str, *options: str) -> Path:
    _ffmpeg("-f", "lavfi", "-i", source, *options, str(path))
    return path


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio")
    sine = f"sine=frequency={SINE_HZ}:duration=1"
    files = {
        ext: _make(folder / f"sine.{ext}", sine, "-c:a", enc) for ext, enc in CONTAINERS.items()
    }
    # Left channel a 0.5 sine, right channel silent, at 44.1 kHz.
    files["stereo"] = _make(
        folder / "stereo.wav", f"aevalsrc=0.5*sin(2*PI*{SINE_HZ}*t)|0:s=44100:d=1"
    )
    files["long"] = _make(folder / "long.wav", f"sine=frequency={SINE_HZ}:duration=3")
    # 10 s of aac: bigger than ffmpeg's pipe buffer, with the index ("moov") at the end.
    files["long_m4a"] = _make(
        folder / "long.m4a", f"sine=frequency={SINE_HZ}:duration=10", "-c:a", "aac"
    )
    files["video_only"] = _make(
        folder / "video.mkv", "testsrc=size=32x32:rate=1:duration=1", "-c:v", "ffv1"
    )
    files["no_samples"] = _make(folder / "empty.wav", sine, "-t", "0")
    # What ffmpeg itself writes: 16-bit PCM, mono, 16 kHz (read without ffmpeg).
    files["wav16k"] = _make(folder / "sine16k.wav", sine, "-ar", "16000", "-ac", "1")
    files["long16k"] = _make(
        folder / "long16k.wav", f"sine=frequency={SINE_HZ}:duration=3", "-ar", "16000"
    )
    return files


def _dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * sample_rate / samples.size


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
@pytest.mark.parametrize("ext", list(CONTAINERS))
def test_decodes_each_container_to_mono_float32_16k(fixtures, ext, as_bytes):
    path = fixtures[ext]
    samples = decode_audio(path.read_bytes() if as_bytes else path)

    assert samples.dtype == np.float32
    assert samples.ndim == 1
    # Lossy codecs add or drop a few ms of padding around the 1 s of audio.
    assert abs(samples.size - 16_000) <= 480
    assert np.all(np.abs(samples) <= 1.0)
    assert np.max(np.abs(samples)) == pytest.approx(SINE_AMPLITUDE, rel=0.15)
    assert _dominant_hz(samples, 16_000) == pytest.approx(SINE_HZ, abs=3)


def test_path_may_be_a_string(fixtures):
    assert decode_audio(str(fixtures["wav"])).size == 16_000


def test_resamples_to_the_requested_rate(fixtures):
    samples = decode_audio(fixtures["flac"], sample_rate=8_000)

    assert samples.size == 8_000
    assert audio_duration(samples, 8_000) == pytest.approx(1.0)
    assert _dominant_hz(samples, 8_000) == pytest.approx(SINE_HZ, abs=3)


def test_stereo_44k_is_averaged_to_mono_16k(fixtures):
    samples = decode_audio(fixtures["stereo"])

    assert samples.shape == (16_000,)
    # (0.5 sine + silence) / 2: the channels are averaged, not summed or dropped.
    assert np.max(np.abs(samples)) == pytest.approx(0.25, rel=0.02)
    assert _dominant_hz(samples, 16_000) == pytest.approx(SINE_HZ, abs=3)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_over_duration_is_rejected_naming_duration_and_limit(fixtures, as_bytes):
    path = fixtures["long"]
    with pytest.raises(AudioInputError, match=r"audio is 3\.0 s long; the limit is 1 s"):
        decode_audio(path.read_bytes() if as_bytes else path, limits=AudioLimits(max_seconds=1))


def test_truncate_keeps_the_start(fixtures):
    limits = AudioLimits(max_seconds=1.5)
    samples = decode_audio(fixtures["long"], limits=limits, truncate=True)

    assert samples.shape == (24_000,)
    assert np.max(np.abs(samples)) == pytest.approx(SINE_AMPLITUDE, rel=0.01)


def test_audio_at_the_limit_is_accepted(fixtures):
    samples = decode_audio(fixtures["wav"], limits=AudioLimits(max_seconds=1))
    assert samples.size == 16_000


def test_m4a_bytes_with_index_at_the_end_decode(fixtures):
    samples = decode_audio(fixtures["long_m4a"].read_bytes())
    assert abs(samples.size - 160_000) <= 480


def test_over_max_bytes_is_rejected_before_decoding(fixtures):
    with pytest.raises(AudioInputError, match=r"audio file is 86\.2 KiB; the limit is 1\.0 KiB"):
        decode_audio(fixtures["wav"].read_bytes(), limits=AudioLimits(max_bytes=1000))


def test_empty_bytes(tmp_path):
    with pytest.raises(AudioInputError, match=r"^audio is empty$"):
        decode_audio(b"")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioInputError, match=r"^audio is empty$"):
        decode_audio(tmp_path / "empty.wav")


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(4096),
        b"The quick brown fox jumps over the lazy dog.\n" * 20,
        _png_bytes(),
    ],
    ids=["random", "text", "png"],
)
def test_non_audio_is_rejected_with_ffmpegs_reason(tmp_path, data):
    pattern = r"^could not decode audio: not a recognised audio file \(ffmpeg: .+\)$"
    with pytest.raises(AudioInputError, match=pattern) as bytes_error:
        decode_audio(data)
    (tmp_path / "upload.txt").write_bytes(data)
    with pytest.raises(AudioInputError, match=pattern):
        decode_audio(tmp_path / "upload.txt")
    assert "upload" not in str(bytes_error.value)  # the temporary file's path is not shown


def test_file_without_audio_stream(fixtures):
    with pytest.raises(AudioInputError, match="the file has no audio stream"):
        decode_audio(fixtures["video_only"])


def test_file_with_zero_samples(fixtures):
    with pytest.raises(AudioInputError, match="the file contains no samples"):
        decode_audio(fixtures["no_samples"])


def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match="audio file not found"):
        decode_audio(tmp_path / "nope.wav")


def test_directory_is_not_an_audio_file(tmp_path):
    with pytest.raises(AudioInputError, match="not a regular file"):
        decode_audio(tmp_path)


def test_timeout_kills_the_decoder(fixtures):
    # No ffmpeg starts, probes and decodes within a microsecond.
    with pytest.raises(AudioInputError, match="decoding took longer than 1e-06 s"):
        decode_audio(fixtures["wav"], limits=AudioLimits(timeout_s=1e-6))


def test_missing_ffmpeg_says_how_to_install_it(fixtures, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AudioError, match="apt-get install ffmpeg"):
        decode_audio(fixtures["wav"])


def _through_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.audio._plain_wav", lambda data, sample_rate: None)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_wav_ffmpeg_would_only_copy_is_read_without_it(fixtures, monkeypatch, tmp_path, as_bytes):
    source = fixtures["wav16k"].read_bytes() if as_bytes else fixtures["wav16k"]
    with monkeypatch.context() as m:
        _through_ffmpeg(m)
        expected = decode_audio(source)
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg to be found
    samples = decode_audio(source)
    assert samples.dtype == np.float32 and samples.size == 16_000
    assert np.array_equal(samples, expected)  # the very samples ffmpeg writes


def test_a_wav_read_without_ffmpeg_keeps_the_limits(fixtures, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    limits = AudioLimits(max_seconds=1)
    with pytest.raises(AudioInputError, match=r"audio is 3\.0 s long; the limit is 1 s"):
        decode_audio(fixtures["long16k"], limits=limits)
    assert decode_audio(fixtures["long16k"], limits=limits, truncate=True).size == 16_000


@pytest.mark.parametrize("change", ["cut", "streamed"])
def test_a_wav_whose_header_does_not_match_its_data_decodes_as_ffmpeg_decodes_it(
    fixtures, monkeypatch, change
):
    data = fixtures["wav16k"].read_bytes()
    at = data.index(b"data") + 8  # the samples, after the data chunk's id and size
    changed = {
        "cut": data[: at + 8_000],  # fewer samples than the header says
        "streamed": data[: at - 4] + b"\x00\x00\x00\x00" + data[at:],  # no data size
    }[change]
    with monkeypatch.context() as m:
        _through_ffmpeg(m)
        expected = decode_audio(changed)
    assert np.array_equal(decode_audio(changed), expected)


def test_invalid_arguments_are_programming_errors():
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        AudioLimits(max_seconds=0)
    with pytest.raises(ValueError, match="sample_rate"):
        decode_audio(b"x", sample_rate=0)
    with pytest.raises(TypeError, match="bytes or a path"):
        decode_audio(123)  # type: ignore[arg-type]


# Headers of real containers, so some examples get past ffmpeg's probe into the demuxers.
_PREFIXES = [b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"OggS\x00\x02", b"fLaC", b"ID3\x03\x00"]


@st.composite
def _damaged(draw: st.DrawFn, files: dict[str, Path]) -> bytes:
    """A valid 1 s file with a few bytes overwritten, to reach the decoders."""
    data = bytearray(files[draw(st.sampled_from([*sorted(CONTAINERS), "wav16k"]))].read_bytes())
    for _ in range(draw(st.integers(1, 16))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def test_arbitrary_bytes_raise_only_audio_input_error(fixtures):
    junk = st.builds(lambda prefix, body: prefix + body, st.sampled_from(_PREFIXES), st.binary())

    @settings(max_examples=25, deadline=None)
    @given(data=st.one_of(junk, _damaged(fixtures)))
    def check(data: bytes) -> None:
        try:
            samples = decode_audio(data)
        except AudioInputError:
            return
        # Whatever ffmpeg made of it, the contract on the output holds.
        assert samples.dtype == np.float32
        assert samples.ndim == 1
        assert 0 < samples.size <= 30 * 16_000
        assert np.all(np.abs(samples) <= 1.0)

    check()
