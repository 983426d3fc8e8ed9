"""twi-speech against faster-whisper and a transformers baseline (``bench.py``)."""
