"""LMD: landmark distance of the mouth between generated and ground-truth face crops.

Landmarks come from mediapipe's face mesh (the paper used dlib's 68 points): the 40 lip points of
`FACEMESH_LIPS` (outer and inner lip contours). Each aligned crop is padded by a quarter of its
size on every side (edge pixels repeated) and scaled to 192 px, so the face mesh sees a face of
the size it was made for; coordinates are mapped back to crop pixels. The mesh runs in tracking
mode over each clip. LMD of a clip = the mean over frames found in both clips of the mean
Euclidean distance between corresponding lip points, in crop pixels.
"""

from __future__ import annotations

import numpy as np

PAD = 0.25
MESH_SIZE = 192


def lip_indices() -> list[int]:
    import mediapipe as mp

    return sorted({i for edge in mp.solutions.face_mesh.FACEMESH_LIPS for i in edge})


class MouthLandmarks:
    def __init__(self, min_confidence: float = 0.3):
        from ..mp_solutions import face_mesh

        self._mesh_factory = lambda: face_mesh(
            static_image_mode=False,
            max_num_faces=1,
            refine_landmarks=False,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self.lips = np.array(lip_indices())

    def clip(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB crops [N, S, S, 3] -> lip points [N, 40, 2] in crop pixels (nan: no face)."""
        import cv2

        size = frames.shape[1]
        pad = int(round(PAD * size))
        scale = MESH_SIZE / (size + 2 * pad)
        out = np.full((len(frames), len(self.lips), 2), np.nan, np.float32)
        mesh = self._mesh_factory()
        try:
            for k, frame in enumerate(frames):
                img = cv2.copyMakeBorder(np.ascontiguousarray(frame), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
                img = cv2.resize(img, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_CUBIC)
                res = mesh.process(img)
                if res.multi_face_landmarks:
                    lm = res.multi_face_landmarks[0].landmark
                    pts = np.array([[lm[i].x, lm[i].y] for i in self.lips], np.float32) * MESH_SIZE
                    out[k] = pts / scale - pad
        finally:
            mesh.close()
        return out


def lmd(fake_points: np.ndarray, real_points: np.ndarray) -> tuple[float, int]:
    """(mean lip-point distance over frames found in both, frames used)."""
    d = np.linalg.norm(fake_points - real_points, axis=-1).mean(-1)
    ok = np.isfinite(d)
    return (float(d[ok].mean()) if ok.any() else float("nan")), int(ok.sum())
