"""Where things are in an aligned face crop (fractions of the crop size), shared by
preprocessing (which puts them there), the generator (which blurs the mouth region of its
starting frame) and evaluation (which scores the mouth region)."""

from __future__ import annotations

import numpy as np

# where preprocessing maps the right eye, left eye and mouth centres, (x, y)
TEMPLATE = np.array([[0.34, 0.37], [0.66, 0.37], [0.50, 0.71]], np.float64)

# the mouth region around the template's mouth centre: lips, mouth corners and the upper chin,
# (top, bottom, left, right)
MOUTH_BOX = (0.56, 0.88, 0.26, 0.74)
