"""Talking faces from still photographs: the renderer that moves a face's mouth and head.

A real photograph gives a base frame and its face-mesh landmarks (found once, offline, with
mediapipe). Each video frame moves the lips and jaw by a smooth displacement field built from
the landmarks: the upper face and the lower face get separate fields, split along the lips'
seam, so the mouth opens (a painted cavity with teeth shows between the lips) instead of
stretching. Mouth shape comes from a viseme track computed from the synthesiser's phoneme
timing (pipeline.data.visemes), so what the face does and what the audio says are in exact
sync. The identities (photographs, landmarks, variations): pipeline.data.identities.
"""

from __future__ import annotations

import numpy as np

from .identities import Identity

# ---------------------------------------------------------------- face-mesh landmark groups
UPPER_OUTER = [185, 40, 39, 37, 0, 267, 269, 270, 409]
LOWER_OUTER = [146, 91, 181, 84, 17, 314, 405, 321, 375]
UPPER_INNER = [191, 80, 81, 82, 13, 312, 311, 310, 415]
LOWER_INNER = [95, 88, 178, 87, 14, 317, 402, 318, 324]
CORNERS = [61, 291, 78, 308]
CHIN = [
    (18, 0.95),
    (200, 0.95),
    (199, 0.95),
    (175, 1.0),
    (152, 1.0),
    (148, 0.85),
    (377, 0.85),
    (176, 0.65),
    (400, 0.65),
    (149, 0.45),
    (378, 0.45),
    (150, 0.25),
    (379, 0.25),
    (136, 0.1),
    (365, 0.1),
    (83, 0.9),
    (313, 0.9),
    (201, 0.8),
    (421, 0.8),
    (32, 0.6),
    (262, 0.6),
]
ANCHORS = [
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
    33,
    133,
    263,
    362,
    159,
    145,
    386,
    374,
    1,
    4,
    5,
    195,
    2,
    98,
    327,
    50,
    280,
    123,
    352,
    207,
    427,
    205,
    425,
    216,
    436,
    192,
    416,
]
# seam: inner lip line from corner to corner
SEAM_UPPER = [78] + UPPER_INNER + [308]
SEAM_LOWER = [78] + LOWER_INNER + [308]


# ---------------------------------------------------------------- rendering
def _mouth_geometry(lm: np.ndarray):
    left, right = lm[61], lm[291]
    width = float(np.linalg.norm(right - left))
    centre = (lm[13] + lm[14]) / 2
    return width, centre


def _displacements(lm: np.ndarray, state: np.ndarray, open_scale: float):
    """Forward displacement of control points for one mouth state (open, width, round).
    Returns (upper_idx, upper_d, lower_idx, lower_d) for the two half-face fields."""
    o, w, r = (float(v) for v in state)
    mw, centre = _mouth_geometry(lm)
    gap0 = float(lm[14, 1] - lm[13, 1])  # the photo's own lip gap (some photos smile)
    jaw = o * 0.36 * mw * open_scale
    spread = 0.10 * w - 0.16 * r  # relative horizontal change of the lips

    def profile(idx):
        dx = np.abs(lm[idx, 0] - centre[0]) / (mw / 2)
        return np.clip(np.cos(np.clip(dx, 0, 1) * np.pi / 2), 0, 1) ** 0.7

    up_idx = np.array(UPPER_OUTER + UPPER_INNER)
    lo_idx = np.array(LOWER_OUTER + LOWER_INNER)
    up_d = np.zeros((len(up_idx), 2))
    lo_d = np.zeros((len(lo_idx), 2))
    up_d[:, 0] = (lm[up_idx, 0] - centre[0]) * spread
    lo_d[:, 0] = (lm[lo_idx, 0] - centre[0]) * spread
    # the photo's own gap, pair by pair (upper/lower inner points are listed in matching order),
    # is closed first so that open = 0 means closed lips even on a smiling photo
    gaps = np.clip(lm[LOWER_INNER, 1] - lm[UPPER_INNER, 1], 0, None)
    up_d[:, 1] = -(0.10 * jaw + 0.035 * mw * r) * profile(up_idx)
    lo_d[:, 1] = (jaw + 0.035 * mw * r) * profile(lo_idx) - 1.4 * np.concatenate([gaps, gaps])

    corner_idx = np.array(CORNERS)
    corner_d = np.zeros((len(corner_idx), 2))
    corner_d[:, 0] = (lm[corner_idx, 0] - centre[0]) * spread
    corner_d[:, 1] = 0.3 * jaw - 0.5 * gap0

    chin_idx = np.array([i for i, _ in CHIN])
    chin_d = np.zeros((len(chin_idx), 2))
    chin_d[:, 1] = (jaw - 0.5 * gap0) * np.array([wt for _, wt in CHIN])

    anchor_idx = np.array(ANCHORS)
    anchor_d = np.zeros((len(anchor_idx), 2))
    upper = (np.concatenate([up_idx, corner_idx, anchor_idx]), np.concatenate([up_d, corner_d, anchor_d]))
    lower = (
        np.concatenate([lo_idx, corner_idx, chin_idx, anchor_idx]),
        np.concatenate([lo_d, corner_d, chin_d, anchor_d]),
    )
    return upper, lower


def _backward_field(points: np.ndarray, disp: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth backward map (destination -> source offset) from control points moved by disp:
    kernel regression at the destinations, with a zero-displacement background term."""
    dest = points + disp
    dx, dy = grid[:, 0, None] - dest[None, :, 0], grid[:, 1, None] - dest[None, :, 1]
    d2 = dx * dx + dy * dy  # bit for bit a [N, P, 2] array summed over its last axis, 6x faster
    k = np.exp(-d2 / (2 * sigma**2))
    num = k @ (-disp)
    den = k.sum(1, keepdims=True) + 1e-3
    return num / den


def render_face(identity: Identity, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame of the identity with the given mouth state; returns (RGB float [S,S,3], landmarks)."""
    import cv2

    lm = identity.landmarks
    base = identity.base
    size = base.shape[0]
    mw, centre = _mouth_geometry(lm)
    (u_idx, u_d), (l_idx, l_d) = _displacements(lm, state, identity.spec.open_scale)

    # the fields are smooth: evaluate them on a coarse grid over the lower face only
    moving = lm[np.concatenate([u_idx, l_idx])][np.abs(np.concatenate([u_d, l_d])).sum(1) > 1e-6]
    sigma = 0.22 * mw
    pad = 3.0 * sigma
    x0, y0 = (np.floor(moving.min(0) - pad).astype(int)).clip(0, size - 1)
    x1, y1 = (np.ceil(moving.max(0) + pad).astype(int)).clip(1, size)
    step = 4
    cys, cxs = np.mgrid[y0 : y1 + step : step, x0 : x1 + step : step].astype(np.float64)
    grid = np.stack([cxs.ravel(), cys.ravel()], 1)
    fu = _backward_field(lm[u_idx], u_d, grid, sigma).reshape(cys.shape + (2,)).astype(np.float32)
    fl = _backward_field(lm[l_idx], l_d, grid, sigma).reshape(cys.shape + (2,)).astype(np.float32)
    h, w = y1 - y0, x1 - x0
    up = lambda f: cv2.resize(f, (cxs.shape[1] * step, cys.shape[0] * step), interpolation=cv2.INTER_LINEAR)[:h, :w]
    fu, fl = up(fu), up(fl)

    moved = lm.copy()
    moved[u_idx] += u_d
    moved[l_idx] += l_d
    seam_up = moved[SEAM_UPPER]
    seam_lo = moved[SEAM_LOWER].copy()
    seam_lo[:, 1] = np.maximum(seam_lo[:, 1], seam_up[:, 1])  # lips pressed together: no cavity
    seam_mid = (seam_up + seam_lo) / 2
    order = np.argsort(seam_mid[:, 0])
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    mid_y = np.interp(xs, seam_mid[order, 0], seam_mid[order, 1])
    x_lo, x_hi = seam_mid[:, 0].min(), seam_mid[:, 0].max()
    outside = np.maximum(0, np.maximum(x_lo - xs, xs - x_hi))
    tau = 0.6 + 0.6 * outside
    s = (1.0 / (1.0 + np.exp(-(ys - mid_y) / tau)))[..., None]
    # the warp moves pixels inside the box only: outside it the frame is the base itself
    grid_y, grid_x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    field = ((1 - s) * fu + s * fl).astype(np.float32)
    frame = base.astype(np.float32) / 255.0
    frame[y0:y1, x0:x1] = (
        cv2.remap(
            base, grid_x + field[..., 0], grid_y + field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        ).astype(np.float32)
        / 255.0
    )

    # the mouth cavity between the moved inner lips, with upper and lower teeth, drawn in the
    # polygon's box (2 px of margin: the mask's blur stays inside)
    poly = np.concatenate([seam_up, seam_lo[::-1]])
    bx0, by0 = (np.floor(poly.min(0)).astype(int) - 3).clip(0, size)
    bx1, by1 = (np.ceil(poly.max(0)).astype(int) + 4).clip(0, size)
    ss = 4  # supersampled mask: anti-aliased edges
    mask = np.zeros(((by1 - by0) * ss, (bx1 - bx0) * ss), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - (bx0, by0)) * ss).astype(np.int32)], 255)
    mask = cv2.resize(mask, (bx1 - bx0, by1 - by0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if mask.size and mask.max() > 0:
        box_y, box_x = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
        up_y = np.interp(box_x, seam_up[np.argsort(seam_up[:, 0]), 0], seam_up[np.argsort(seam_up[:, 0]), 1])
        lo_y = np.interp(box_x, seam_lo[np.argsort(seam_lo[:, 0]), 0], seam_lo[np.argsort(seam_lo[:, 0]), 1])
        depth = np.clip((box_y - up_y) / np.maximum(lo_y - up_y, 1.0), 0, 1)
        cavity = np.stack([0.24 - 0.12 * depth, 0.08 - 0.04 * depth, 0.09 - 0.04 * depth], -1)
        teeth_h = 0.1 * mw
        teeth = np.clip((up_y + teeth_h - box_y) / 1.5, 0, 1) + 0.6 * np.clip((box_y - (lo_y - 0.05 * mw)) / 1.5, 0, 1)
        teeth = np.clip(teeth, 0, 1)[..., None]
        shade = (1.0 - 0.15 * depth)[..., None]
        cavity = cavity * (1 - teeth) + np.array([0.93, 0.9, 0.84], np.float32) * shade * teeth
        mask = cv2.GaussianBlur(mask, (3, 3), 0.6)[..., None]
        inside = frame[by0:by1, bx0:bx1] * (1 - mask) + cavity * mask  # float32 * float32 + float64
        frame = frame.astype(np.float64)
        frame[by0:by1, bx0:bx1] = inside
    return frame, moved


def render_clip(identity: Identity, mouth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 [T, S, S, 3]: the mouth track, smooth head motion, lighting and sensor noise."""
    import cv2

    t = len(mouth)
    size = identity.base.shape[0]

    def walk(scale):  # smooth random walk with zero mean
        steps = rng.normal(0, 1, t + 8).cumsum()
        steps = np.convolve(steps, np.ones(5) / 5, mode="valid")[:t]
        return (steps - steps.mean()) * scale

    angle, tx, ty = walk(0.5), walk(0.9), walk(0.6)
    zoom = 1.0 + walk(0.004)
    light_dir = rng.uniform(-0.12, 0.12)
    light_drift = walk(0.01)
    brightness = rng.uniform(0.9, 1.08)
    xs = np.linspace(-1, 1, size, dtype=np.float32)[None, :, None]
    frames = np.empty((t, size, size, 3), np.uint8)
    for i in range(t):
        face, _ = render_face(identity, mouth[i])
        m = cv2.getRotationMatrix2D((size / 2, size / 2), float(angle[i]), float(zoom[i]))
        m[:, 2] += (tx[i], ty[i])
        face = cv2.warpAffine(face, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        gain = brightness * (1.0 + (light_dir + light_drift[i]) * xs)
        noisy = face * gain + rng.normal(0, 1.2 / 255.0, face.shape).astype(np.float32)
        frames[i] = (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)
    return frames
