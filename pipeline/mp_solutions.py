"""mediapipe's solutions (face mesh, face detection, selfie segmentation), without their start-up
chatter.

Each new solution graph prints a few lines from native code on its first frame ("Created
TensorFlow Lite XNNPACK delegate", "Feedback manager requires a model with a single signature",
...): several hundred lines in a default run, which buried the stages' own output. Their native
logging ignores GLOG_minloglevel and TF_CPP_MIN_LOG_LEVEL, and its graph threads print whenever
they open a model, so from a solution's construction until all its models have run once (for the
face mesh: the first frame with a face) file descriptor 2 goes to a temporary file; then every line
that is not one of those known notices is written to stderr as it was, so no real error is lost
(an exit inside that window writes them back too).
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import threading
from contextlib import contextmanager

NOTICES = (
    "Created TensorFlow Lite XNNPACK delegate",
    "All log messages before absl::InitializeLog()",
    "inference_feedback_manager.cc",
    "landmark_projection_calculator.cc",
)


class _Window:
    """Where file descriptor 2 goes while any solution is starting: a temporary file, written back
    to the real stderr (less the notices) when the last one has started. Solutions start side by
    side (a tracker builds its detector and its mesh together, and a graph prints from its own
    threads), so the window is counted, not nested."""

    def __init__(self):
        self.lock = threading.Lock()
        self.open_count = 0
        self.saved_fd: int | None = None
        self.captured = None
        atexit.register(self.flush_all)  # a traceback printed inside the window still comes out

    def enter(self) -> None:
        with self.lock:
            if self.open_count == 0:
                sys.stderr.flush()
                self.captured = tempfile.TemporaryFile()
                self.saved_fd = os.dup(2)
                os.dup2(self.captured.fileno(), 2)
            self.open_count += 1

    def leave(self) -> None:
        with self.lock:
            if self.open_count == 0:
                return
            self.open_count -= 1
            if self.open_count == 0:
                self._restore()

    def flush_all(self) -> None:
        with self.lock:
            if self.open_count:
                self.open_count = 0
                self._restore()

    def _restore(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved_fd, 2)
        os.close(self.saved_fd)
        self.captured.seek(0)
        kept = [
            line
            for line in self.captured.read().decode(errors="replace").splitlines(keepends=True)
            if not any(n in line for n in NOTICES)
        ]
        self.captured.close()
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


_WINDOW = _Window()


@contextmanager
def native_notices_dropped():
    """Run a block with fd 2 captured; then write its lines back, less mediapipe's notices."""
    _WINDOW.enter()
    try:
        yield
    finally:
        _WINDOW.leave()


def _models_ran(result) -> bool:
    """Whether every model of the graph has run: a face mesh runs its landmark model (and prints
    that model's notices) only on the first frame where its detector finds a face."""
    return (
        bool(getattr(result, "multi_face_landmarks", None) or getattr(result, "detections", None))
        or getattr(result, "segmentation_mask", None) is not None
    )


class Quiet:
    """A mediapipe solution that starts inside the window: from its construction (its graph's
    threads open the models, and print, in the background) until a `process` call shows that all
    its models have run, or it is closed."""

    def __init__(self, factory):
        _WINDOW.enter()
        self._starting = True
        try:
            self._solution = factory()
        except BaseException:
            self._started()
            raise

    def _started(self) -> None:
        if self._starting:
            self._starting = False
            _WINDOW.leave()

    def process(self, image):
        result = self._solution.process(image)
        if self._starting and _models_ran(result):
            self._started()
        return result

    def close(self) -> None:
        self._started()
        self._solution.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def face_mesh(**kwargs) -> Quiet:
    import mediapipe as mp

    return Quiet(lambda: mp.solutions.face_mesh.FaceMesh(**kwargs))


def face_detection(**kwargs) -> Quiet:
    import mediapipe as mp

    return Quiet(lambda: mp.solutions.face_detection.FaceDetection(**kwargs))


def selfie_segmentation(**kwargs) -> Quiet:
    import mediapipe as mp

    return Quiet(lambda: mp.solutions.selfie_segmentation.SelfieSegmentation(**kwargs))
