"""Offline speech synthesis with phoneme and word timing (libespeak-ng through ctypes).

The library and its voice data come from the `espeakng-loader` wheel, so nothing is fetched at
run time. espeak-ng reports each phoneme and word with its sample offset, which drives the
embedded corpus's mouth motion (`face_anim.viseme_track`) in exact sync with the audio.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import threading
from dataclasses import dataclass, field

import numpy as np

from ..io.ffmpeg import SAMPLE_RATE

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_EV_END_OF_LIST, _EV_WORD, _EV_PHONEME = 0, 1, 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_POS_CHARACTER = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Segment:
    label: str
    start: float  # seconds
    end: float


@dataclass
class Speech:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phones: list[Segment] = field(default_factory=list)
    words: list[Segment] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def is_silence(phone: str) -> bool:
    return phone.startswith("_") or phone == ""


class _Engine:
    """One espeak-ng instance per process (the C library keeps global state)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _INIT_PHONEME_EVENTS
        )
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise from the espeakng-loader data")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple] = []
        self._cb = _CALLBACK(self._on_audio)  # kept referenced: ctypes does not
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lock = threading.Lock()

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EV_END_OF_LIST:
            ev = events[i]
            if ev.type == _EV_PHONEME:
                self._events.append(("phone", ev.id.string.decode("ascii", "replace"), ev.sample))
            elif ev.type == _EV_WORD:
                self._events.append(("word", (ev.text_position, ev.length), ev.sample))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int):
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            self.lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            self.lib.espeak_Synth(ctypes.c_char_p(data), len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return audio, list(self._events)


_engine: _Engine | None = None


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def _synth_raw(text, voice, rate, pitch, pitch_range):
    engine = _get_engine()
    raw, events = engine.synth(text, voice, rate, pitch, pitch_range)
    return raw, events, engine.rate


def _in_fresh_process(fn, *args):
    """Run fn in a forked child that has never synthesised anything.

    libespeak-ng keeps state between utterances (the second utterance of a process differs
    from run to run, even after espeak_Terminate), while the first utterance of a process is
    reproducible: so each utterance gets a process of its own, which makes the corpus seeded.
    (The breathy variants f2, f3 and f5 add noise that no seed controls: the corpus avoids them.)
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            payload = ("ok", fn(*args))
        except BaseException as exc:  # sent to the parent, which re-raises it
            payload = ("err", exc)
        with os.fdopen(w, "wb") as fh:
            pickle.dump(payload, fh)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"speech synthesis process died (status {status})")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value


def synthesize(
    text: str,
    voice: str = "en-us",
    rate: int = 165,
    pitch: int = 50,
    pitch_range: int = 50,
    sample_rate: int = SAMPLE_RATE,
) -> Speech:
    """Speak `text`; return audio at `sample_rate` with phone and word segments in seconds."""
    from scipy.signal import resample_poly

    raw, events, native = _in_fresh_process(_synth_raw, text, voice, rate, pitch, pitch_range)
    g = np.gcd(sample_rate, native)
    audio = resample_poly(raw.astype(np.float32) / 32768.0, sample_rate // g, native // g).astype(np.float32)
    total = len(raw) / native

    phones: list[Segment] = []
    words: list[Segment] = []
    phone_events = [(label, s / native) for kind, label, s in events if kind == "phone"]
    word_events = [(pos, s / native) for kind, pos, s in events if kind == "word"]
    if phone_events and phone_events[0][1] > 0:
        phones.append(Segment("_", 0.0, phone_events[0][1]))
    for k, (label, start) in enumerate(phone_events):
        end = phone_events[k + 1][1] if k + 1 < len(phone_events) else total
        phones.append(Segment(label.lstrip("',"), start, max(start, end)))
    raw_text = text.encode("utf-8")
    for k, ((pos, length), start) in enumerate(word_events):
        end = word_events[k + 1][1] if k + 1 < len(word_events) else total
        # end the word at its last voiced phone rather than at the next word's start
        voiced = [p.end for p in phones if start <= p.start < end and not is_silence(p.label)]
        label = raw_text[pos - 1 : pos - 1 + length].decode("utf-8", "replace")
        words.append(Segment(label, start, max(voiced) if voiced else end))
    return Speech(audio=audio, sample_rate=sample_rate, phones=phones, words=words)


def speech_coverage(phones: list[Segment], start: float, end: float) -> float:
    """Fraction of [start, end) covered by non-silent phones."""
    covered = 0.0
    for p in phones:
        if is_silence(p.label):
            continue
        covered += max(0.0, min(end, p.end) - max(start, p.start))
    return covered / max(1e-9, end - start)
