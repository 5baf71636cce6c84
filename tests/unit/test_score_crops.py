"""syncnet_python's face crop, as `score` makes it for SyncNet v2."""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.score import syncnet_crops


def test_the_crop_is_the_face_box_padded_as_syncnet_python_pads_it():
    """A face box 80 wide and 100 high centred at (100, 100): half-size s = 50, padding c = 0.4,
    so the crop spans x 100 - 1.4 s .. 100 + 1.4 s = 30..170 and y 100 - s .. 100 + 1.8 s =
    50..190 (the chin margin), outside the frame filled with syncnet_python's grey 110."""
    yy, xx = np.mgrid[0:200, 0:200]
    frame = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    frames = np.repeat(frame[None], 13, axis=0)
    box = np.array([[60, 50], [140, 50], [60, 150], [140, 150]], np.float32)
    crop = syncnet_crops(frames, np.repeat(box[None], 13, axis=0))
    assert crop.shape == (13, 224, 224, 3)
    x, y = crop[0, ..., 0].astype(int), crop[0, ..., 1].astype(int)
    assert abs(x[112, 0] - 30) <= 1 and abs(x[112, -1] - 169) <= 1
    assert abs(y[0, 112] - 50) <= 1 and abs(y[-1, 112] - 189) <= 1
    shifted = np.repeat((box + [120, 0])[None], 13, axis=0)  # the box near the right edge: grey beyond it
    assert (syncnet_crops(frames, shifted)[0, 112, -10:] == 110).all()
