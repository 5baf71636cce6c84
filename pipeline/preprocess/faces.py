"""Face landmarks over a clip with mediapipe's face mesh, in tracking mode.

The face mesh runs its face detector only when it has lost the track (docs/design.md §8: ~3.7 ms per
frame instead of ~7.3 ms). Models come from the installed wheel; nothing is downloaded. When
several faces are visible, the speaking face is chosen once (largest and most central in the
first frame that has faces) and followed by position for the whole clip, never switching;
frames where it is not found are gaps, filled from their neighbours when short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_LANDMARKS = 468


@dataclass
class FaceTrack:
    landmarks: np.ndarray  # float32 [T, 468, 2], frame pixels; gaps filled
    found: np.ndarray  # bool [T]: the face was found in this frame (before filling)
    max_faces: int  # most faces seen in one frame
    longest_gap: int


class NoFace(Exception):
    pass


class FaceLost(Exception):
    pass


class FaceTracker:
    """Face mesh in tracking mode. A face detector first looks at every `probe_every`-th frame:
    clips with one face (nearly all) take the fast single-face mesh (~2.3 ms per frame here);
    clips where it sees several take a mesh that follows up to `max_faces` (~3.8 ms)."""

    def __init__(self, max_faces: int = 2, min_confidence: float = 0.5, probe_every: int = 8):
        from .. import mp_solutions

        self._mp = mp_solutions
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self.probe_every = probe_every
        self._single = self._new_mesh(1)
        self._multi = None
        self._detector = (
            mp_solutions.face_detection(model_selection=0, min_detection_confidence=min_confidence)
            if max_faces > 1
            else None
        )

    def _new_mesh(self, n: int):
        return self._mp.face_mesh(
            static_image_mode=False,
            max_num_faces=n,
            refine_landmarks=False,
            min_detection_confidence=self.min_confidence,
            min_tracking_confidence=self.min_confidence,
        )

    def close(self) -> None:
        for m in (self._single, self._multi, self._detector):
            if m is not None:
                m.close()

    def _reset(self, mesh, shape) -> None:
        # a frame without a face ends the previous clip's track, so the next clip starts
        # with a detection instead of inheriting a region of interest
        mesh.process(np.zeros((max(32, shape[0] // 4), max(32, shape[1] // 4), 3), np.uint8))

    def count_faces(self, frames: np.ndarray) -> int:
        if self._detector is None:
            return 1
        probe = list(range(0, len(frames), self.probe_every)) + [len(frames) - 1]
        return max(len(self._detector.process(frames[i]).detections or []) for i in sorted(set(probe)))

    @staticmethod
    def faces(mesh, frame: np.ndarray) -> list[np.ndarray]:
        res = mesh.process(frame)
        h, w = frame.shape[:2]
        out = []
        scale = np.array([w, h], np.float32)
        for face in res.multi_face_landmarks or []:
            flat = np.fromiter(
                (v for p in face.landmark[:N_LANDMARKS] for v in (p.x, p.y)), np.float32, 2 * N_LANDMARKS
            )
            out.append(flat.reshape(N_LANDMARKS, 2) * scale)
        return out

    def track(self, frames: np.ndarray, max_gap: int) -> FaceTrack:
        """Landmarks of the speaking face in every frame; raises NoFace / FaceLost."""
        t = len(frames)
        h, w = frames.shape[1:3]
        seen = self.count_faces(frames)
        if seen > 1:
            if self._multi is None:
                self._multi = self._new_mesh(self.max_faces)
            mesh = self._multi
        else:
            mesh = self._single
        self._reset(mesh, frames.shape[1:3])
        lms = np.full((t, N_LANDMARKS, 2), np.nan, np.float32)
        found = np.zeros(t, bool)
        max_faces = seen
        prev_centre = None
        prev_size = None
        for i, frame in enumerate(frames):
            faces = self.faces(mesh, frame)
            max_faces = max(max_faces, len(faces))
            if not faces:
                continue
            centres = np.array([f.mean(0) for f in faces])
            sizes = np.array([np.ptp(f[:, 0]) for f in faces])
            if prev_centre is None:
                off_centre = np.linalg.norm(centres - np.array([w / 2, h / 2]), axis=1) / np.hypot(w, h)
                k = int(np.argmax(sizes * (1.0 - off_centre)))
            else:
                dist = np.linalg.norm(centres - prev_centre, axis=1)
                k = int(np.argmin(dist))
                if dist[k] > 0.5 * prev_size:  # only another face is visible: a gap, not a switch
                    continue
            lms[i] = faces[k]
            found[i] = True
            prev_centre, prev_size = centres[k], sizes[k]
        if not found.any():
            raise NoFace("no face in any frame")
        gaps = _runs(~found)
        longest = max((b - a for a, b in gaps), default=0)
        if longest > max_gap:
            a, b = max(gaps, key=lambda r: r[1] - r[0])
            raise FaceLost(f"face lost for {b - a} frames ({a}..{b - 1}; max_gap {max_gap})")
        _fill(lms, found)
        return FaceTrack(lms, found, max_faces, longest)

    def tracks(self, frames: np.ndarray, min_coverage: float = 0.5) -> list[FaceTrack]:
        """Every face of the clip, each followed by position (a face is matched to the nearest
        track within half its width, else starts a new one); tracks found in fewer than
        `min_coverage` of the frames are dropped, gaps are filled. Left to right."""
        t = len(frames)
        if self._multi is None:
            self._multi = self._new_mesh(self.max_faces)
        mesh = self._multi
        self._reset(mesh, frames.shape[1:3])
        tracks: list[dict] = []  # landmarks [T, 468, 2], found [T], last centre, last size
        most = 0
        for i, frame in enumerate(frames):
            faces = self.faces(mesh, frame)
            most = max(most, len(faces))
            taken = set()
            for f in sorted(faces, key=lambda f: -np.ptp(f[:, 0])):
                centre, size = f.mean(0), float(np.ptp(f[:, 0]))
                free = [k for k in range(len(tracks)) if k not in taken]
                dists = [np.linalg.norm(centre - tracks[k]["centre"]) for k in free]
                if dists and min(dists) <= 0.5 * tracks[free[int(np.argmin(dists))]]["size"]:
                    k = free[int(np.argmin(dists))]
                else:
                    tracks.append({"lms": np.full((t, N_LANDMARKS, 2), np.nan, np.float32), "found": np.zeros(t, bool)})
                    k = len(tracks) - 1
                tr = tracks[k]
                tr["lms"][i], tr["found"][i], tr["centre"], tr["size"] = f, True, centre, size
                taken.add(k)
        out = []
        for tr in tracks:
            if tr["found"].mean() < min_coverage:
                continue
            longest = max((b - a for a, b in _runs(~tr["found"])), default=0)
            _fill(tr["lms"], tr["found"])
            out.append(FaceTrack(tr["lms"], tr["found"], most, longest))
        return sorted(out, key=lambda tr: float(np.nanmean(tr.landmarks[..., 0])))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def _fill(lms: np.ndarray, found: np.ndarray) -> None:
    """Linear interpolation between the neighbours of each gap (nearest at the clip's ends)."""
    if found.all():
        return
    idx = np.flatnonzero(found)
    t = np.arange(len(found))
    flat = lms.reshape(len(found), -1)
    for k in range(flat.shape[1]):
        flat[:, k] = np.interp(t, idx, flat[idx, k])
