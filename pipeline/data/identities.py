"""The embedded corpus' speakers: public-domain photographs, each made into several identities
(mirrored, recoloured, tilted, rescaled, on another background), with the face-mesh landmarks of
the neutral frame that the renderer (pipeline.data.face_anim) moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

PHOTOS = {
    # name: (loader description, licence)
    "astronaut": "scikit-image data/astronaut.png: Eileen Collins, NASA portrait (public domain)",
    "hopper": "matplotlib sample_data/grace_hopper.jpg: Grace Hopper, US Navy photo (public domain)",
}


def load_photo(name: str) -> np.ndarray:
    import imageio.v3 as iio

    if name == "astronaut":
        import skimage

        path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    elif name == "hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    else:
        raise KeyError(f"unknown photo {name!r} (known: {', '.join(PHOTOS)})")
    img = iio.imread(path)
    return np.ascontiguousarray(img[..., :3])


def face_mesh_landmarks(img: np.ndarray) -> np.ndarray:
    """468 face-mesh landmarks (x, y in pixels) of the single face in an RGB image."""
    from ..mp_solutions import face_mesh

    with face_mesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False) as fm:
        res = fm.process(img)
    if not res.multi_face_landmarks:
        raise RuntimeError("face mesh found no face in the source photo")
    h, w = img.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark[:468]], np.float64)


def background_mask(img: np.ndarray) -> np.ndarray:
    """Soft person mask in [0, 1] (mediapipe selfie segmentation, model inside the wheel)."""
    from ..mp_solutions import selfie_segmentation

    with selfie_segmentation(model_selection=0) as seg:
        res = seg.process(img)
    return np.clip(res.segmentation_mask.astype(np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class IdentitySpec:
    name: str
    photo: str
    mirror: bool
    face_frac: float  # face width / frame width
    aspect: float  # horizontal stretch of the face (geometry)
    tilt_deg: float
    hue_shift: float  # degrees
    saturation: float
    gamma: float
    tint: tuple[float, float, float]
    background: tuple[int, int, int] | None  # replace the background with this colour (None: keep)
    open_scale: float  # how wide this person opens the mouth


def identity_specs(per_photo: int) -> list[IdentitySpec]:
    """Identities: variant 0 of each photo is the photo itself; the others change geometry,
    framing, skin tone, lighting and background. The last variant of each photo is the
    held-out test identity and differs most."""
    styles = [
        dict(
            mirror=False,
            face_frac=0.46,
            aspect=1.0,
            tilt_deg=0.0,
            hue_shift=0.0,
            saturation=1.0,
            gamma=1.0,
            tint=(1.0, 1.0, 1.0),
            background=None,
            open_scale=1.0,
        ),
        dict(
            mirror=True,
            face_frac=0.52,
            aspect=1.07,
            tilt_deg=-3.0,
            hue_shift=4.0,
            saturation=1.0,
            gamma=0.9,
            tint=(1.05, 1.0, 0.93),
            background=(64, 96, 140),
            open_scale=0.9,
        ),
        dict(
            mirror=False,
            face_frac=0.42,
            aspect=0.93,
            tilt_deg=2.5,
            hue_shift=-5.0,
            saturation=0.85,
            gamma=1.15,
            tint=(0.95, 1.0, 1.06),
            background=(150, 140, 120),
            open_scale=1.1,
        ),
        dict(
            mirror=True,
            face_frac=0.48,
            aspect=1.12,
            tilt_deg=4.0,
            hue_shift=10.0,
            saturation=0.7,
            gamma=1.3,
            tint=(0.9, 0.95, 1.1),
            background=(40, 40, 48),
            open_scale=1.2,
        ),
    ]
    # the held-out (last) identity takes the most different style, which no other identity uses
    test_style = 3 if per_photo > 3 else 2
    shared = [st for k, st in enumerate(styles) if k != test_style]
    out = []
    for photo in PHOTOS:
        for v in range(per_photo):
            if v == per_photo - 1 and v >= 1:
                style = dict(styles[test_style])
            else:
                style = dict(shared[v % len(shared)])
                k = v // len(shared)
                if k:  # more identities than styles: perturb deterministically
                    style.update(
                        face_frac=style["face_frac"] * (1 + 0.04 * k),
                        hue_shift=style["hue_shift"] + 4 * k,
                        gamma=style["gamma"] * (1 + 0.05 * k),
                    )
            out.append(IdentitySpec(name=f"{photo}-{v}", photo=photo, **style))
    return out


@dataclass
class Identity:
    spec: IdentitySpec
    base: np.ndarray  # uint8 [S, S, 3], the neutral frame
    landmarks: np.ndarray  # [468, 2] in base pixels


def _recolour(img: np.ndarray, spec: IdentitySpec) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + spec.hue_shift * 256.0 / 360.0) % 256.0
    hsv[..., 1] = np.clip(hsv[..., 1] * spec.saturation, 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32) / 255.0
    out = np.clip(out**spec.gamma * np.array(spec.tint, np.float32), 0, 1)
    return out


def build_identity(spec: IdentitySpec, size: int) -> Identity:
    import cv2

    photo = load_photo(spec.photo)
    lm = _photo_landmarks(spec.photo)
    if spec.mirror:
        photo = np.ascontiguousarray(photo[:, ::-1])
        lm = lm.copy()
        lm[:, 0] = photo.shape[1] - 1 - lm[:, 0]
    lo, hi = lm.min(0), lm.max(0)
    centre = (lo + hi) / 2 + np.array([0.0, 0.04 * (hi[1] - lo[1])])
    scale = spec.face_frac * size / (hi[0] - lo[0])
    # affine: photo -> base frame (scale, horizontal stretch, tilt about the face centre)
    th = np.deg2rad(spec.tilt_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lin = rot @ np.diag([scale * spec.aspect, scale])
    offset = np.array([size / 2, size / 2]) - lin @ centre
    affine = np.hstack([lin, offset[:, None]])
    base = cv2.warpAffine(
        photo,
        affine,
        (size, size),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT101,
    )
    landmarks = lm @ lin.T + offset
    colour = _recolour(base, spec)
    if spec.background is not None:
        mask = background_mask(base)[..., None]
        bg = np.array(spec.background, np.float32) / 255.0
        ys = np.linspace(0.85, 1.15, size, dtype=np.float32)[:, None, None]
        colour = colour * mask + np.clip(bg * ys, 0, 1) * (1 - mask)
    return Identity(spec, (np.clip(colour, 0, 1) * 255).round().astype(np.uint8), landmarks)


@lru_cache(maxsize=8)
def _photo_landmarks(photo: str) -> np.ndarray:
    return face_mesh_landmarks(load_photo(photo))
