"""Video frame <-> mel frame: the one mapping used by datasets, training, evaluation and
inference (docs/design.md §4).

The window of video frame i covers video frames i-2 .. i+2 (0.2 s at 25 fps) and mel frames
[floor(80 * (i - 2) / fps), +16): the audio centred on the frame, as the 5-frame lip window is.
Wav2Lip's expert used the same window; its generator's start one frame later in training and two
in inference (docs/design.md §4). Frames whose window does not fit inside the clip are invalid: they
are never padded silently.
"""

from __future__ import annotations

import math

from .audio import MEL_FPS

FPS = 25  # the video frame rate every stage works at (clips and inputs are converted to it)
MEL_STEPS = 16  # mel frames per window (0.2 s)
HALF = 2  # video frames each side of the centre frame
WINDOW = 2 * HALF + 1


class WindowError(ValueError):
    pass


def mel_start(frame: int, fps: float = FPS) -> int:
    """First mel frame of video frame `frame`'s window."""
    from fractions import Fraction

    ratio = Fraction(MEL_FPS).limit_denominator(1000) / Fraction(fps).limit_denominator(1000)
    return math.floor((frame - HALF) * ratio)


def mel_window(frame: int, n_frames: int, n_mel: int, fps: float = FPS) -> slice:
    """The mel slice of frame `frame`; raises WindowError when the window leaves the clip."""
    if frame - HALF < 0 or frame + HALF >= n_frames:
        raise WindowError(f"frame {frame}: its 5-frame window leaves the clip (0..{n_frames - 1})")
    start = mel_start(frame, fps)
    if start < 0 or start + MEL_STEPS > n_mel:
        raise WindowError(f"frame {frame}: mel window {start}..{start + MEL_STEPS} leaves the mel (0..{n_mel})")
    return slice(start, start + MEL_STEPS)


def frame_window(frame: int, n_frames: int) -> slice:
    """The 5 video frames centred on `frame`."""
    if frame - HALF < 0 or frame + HALF >= n_frames:
        raise WindowError(f"frame {frame}: its 5-frame window leaves the clip (0..{n_frames - 1})")
    return slice(frame - HALF, frame + HALF + 1)


def valid_frames(n_frames: int, n_mel: int, fps: float = FPS) -> range:
    """Centre frames whose video and mel windows both lie inside the clip."""
    first = HALF
    while first < n_frames and mel_start(first, fps) < 0:
        first += 1
    last = n_frames - 1 - HALF
    while last >= first and mel_start(last, fps) + MEL_STEPS > n_mel:
        last -= 1
    return range(first, last + 1)


def frame_of_mel(mel_frame: int, fps: float = FPS) -> int:
    """The last video frame whose window starts at or before `mel_frame` (so that
    frame_of_mel(mel_start(i)) == i)."""
    from fractions import Fraction

    ratio = Fraction(fps).limit_denominator(1000) / Fraction(MEL_FPS).limit_denominator(1000)
    return math.ceil((mel_frame + 1) * ratio) - 1 + HALF
