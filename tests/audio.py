"""Audio made at test time, shared by the tests and the benchmark (no
pytest here: `python -m bench` imports it too)."""

import array
import io
import math
import wave


def stereo_wav(seconds: float = 20.0, rate: int = 44100) -> bytes:
    """A 16-bit stereo WAV: a tone whose loudness swells and fades each
    second (so its waveform has a shape), different in each channel."""
    frames = int(seconds * rate)
    samples = array.array("h", bytes(4 * frames))
    for n in range(frames):
        t = n / rate
        swell = 0.2 + 0.8 * abs(math.sin(math.pi * t))
        samples[2 * n] = int(12000 * swell * math.sin(2 * math.pi * 220 * t))
        samples[2 * n + 1] = int(9000 * swell * math.sin(2 * math.pi * 330 * t))
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(2)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(samples.tobytes())
    return out.getvalue()
