"""The project expert's offset search (pipeline.nets.sync): the padding of windows without a partner, the rival gap."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.nets.sync import UNCERTAIN_GAP, estimate_offset, offset_distances, rival, rival_gap, window_chance


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_windows_without_a_partner_count_their_own_chance_distance():
    """Every face window is 0.6-similar to its own audio window (cosine distance 0.4), except 8
    that copy the audio 12 windows earlier. Over the overlap only, shift 12's few perfect pairs
    would win (its other windows drop out); counted over all 25 windows, a missing partner at its
    own chance distance (its mean distance to the face windows sharing no frame with it), the
    clip is in sync."""
    rng = np.random.default_rng(0)
    n, dim = 25, 64
    a = unit(rng.normal(size=(n, dim)))
    noise = unit(rng.normal(size=(n, dim)))
    noise = unit(noise - (noise * a).sum(1, keepdims=True) * a)  # orthogonal to a
    v = 0.6 * a + 0.8 * noise
    v[12:20] = a[0:8]
    d = offset_distances(a, v, search=15)
    full = 1.0 - a @ v.T
    far = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) >= 5  # windows that share no frame
    chance = np.array([full[i, far[i]].mean() for i in range(n)])
    np.testing.assert_allclose(window_chance(a, v), chance, rtol=1e-9)
    i = np.arange(0, n - 12)
    overlap_only = np.mean(1.0 - (a[i] * v[i + 12]).sum(1))
    assert overlap_only < d[15]  # the shift that wins over the overlap only
    assert d[15 + 12] == pytest.approx((np.sum(1.0 - (a[i] * v[i + 12]).sum(1)) + chance[n - 12 :].sum()) / n)
    assert estimate_offset(d, 15)[0] == 0


def test_dropping_the_windows_that_fit_nothing_does_not_win():
    """A clip that opens with 8 windows of silence (audio far from every face: distance 1.7) and
    then speaks in sync (distance 0.6 to its own face window, 0.7 to the others). One chance
    distance for the whole clip (the mean of its unrelated pairs) pads the silent windows with
    less than they cost at every shift where they have a partner, so the shift that drops them
    wins by dropping them (offset +8: audio 8 windows late); each window's own chance distance
    leaves it in sync. In a clip of under 10 windows, a window with no face window 5 away takes
    its mean over all of them."""
    n, silent = 25, 8
    u = np.zeros(2 * n + 1)
    u[-1] = 1.0
    v = np.stack([(np.eye(2 * n + 1)[j] + u) / np.sqrt(2) for j in range(n)])
    p, q, r = 1 / 3, 1.0, np.sqrt(1 / (2 * 0.3**2) - 1 - 1 / 9)  # own 0.4, other 0.3 similar
    a = np.stack([p * np.eye(2 * n + 1)[i] + q * u + r * np.eye(2 * n + 1)[n + i] for i in range(n)])
    a[:silent] = -u
    a = unit(a)
    sim = a @ v.T
    assert sim[silent, silent] == pytest.approx(0.4) and sim[silent, 0] == pytest.approx(0.3)
    far = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) >= 5
    clip_chance = (1.0 - sim)[far].mean()
    one_chance = [
        (np.sum(1.0 - sim[i, i + o]) + (n - len(i)) * clip_chance) / n
        for o in range(-15, 16)
        for i in [np.arange(max(0, -o), min(n, n - o))]
    ]
    assert -(int(np.argmin(one_chance)) - 15) == silent  # fooled by the silence
    assert estimate_offset(offset_distances(a, v), 15)[0] == 0
    w = slice(silent, silent + 6)  # 6 speaking windows: windows 1-4 have no face window 5 away
    small = window_chance(a[w], v[w])
    assert small[2] == pytest.approx(np.mean(1.0 - sim[w, w][2]))  # its own partner (0.6) and the others (0.7)
    assert small[0] == pytest.approx(1.0 - sim[silent, silent + 5])


def test_a_clip_without_sync_is_not_pulled_towards_offset_0():
    """Embeddings with no sync but close to one another (unrelated pairs at distance ~0.2): a
    fixed padding distance of 1 (syncnet_python's zero vectors) would make every large shift lose
    and report nearly every such clip at offset 0; the chance distance leaves the offset as
    random as the clip is (the mean |offset| of a uniform pick in -15..15 is 7.75)."""
    rng = np.random.default_rng(1)
    offsets, fixed = [], []
    for _ in range(200):
        common = rng.normal(size=64)
        a = unit(common + 0.35 * np.linalg.norm(common) / 8 * rng.normal(size=(25, 64)))
        v = unit(common + 0.35 * np.linalg.norm(common) / 8 * rng.normal(size=(25, 64)))
        offsets.append(abs(estimate_offset(offset_distances(a, v), 15)[0]))
        padded = [
            (np.sum(1.0 - (a[i] * v[i + o]).sum(1)) + (25 - len(i)) * 1.0) / 25
            for o in range(-15, 16)
            for i in [np.arange(max(0, -o), min(25, 25 - o))]
        ]
        fixed.append(abs(int(np.argmin(padded)) - 15))
    assert 0.1 < np.mean(1.0 - (a[:, None] * v[None]).sum(-1)) < 0.4  # related-looking, not in sync
    assert np.mean(offsets) > 5.0 and np.mean(fixed) < 1.0


def test_too_little_overlap_is_no_evidence():
    a = unit(np.random.default_rng(1).normal(size=(6, 8)))
    d = offset_distances(a, a, search=5, min_overlap=3)
    assert np.isnan(d[:2]).all() and np.isnan(d[-2:]).all() and not np.isnan(d[2:-2]).any()


def curve(minima: dict[int, float], n: int = 31) -> np.ndarray:
    """A distance curve of 0.9 with V-shaped dips at the given indices."""
    d = np.full(n, 0.9)
    for k, depth in minima.items():
        for j in range(n):
            d[j] = min(d[j], depth + 0.1 * abs(j - k))
    return d


def test_rival_gap_tells_two_equal_minima_from_one():
    assert rival_gap(curve({15: 0.3})) == 1.0  # no rival
    c = curve({15: 0.3, 26: 0.31})
    two = rival_gap(c)
    assert two < UNCERTAIN_GAP and two == pytest.approx(0.01 / (np.median(c) - 0.3))  # in units of LSE-C
    assert rival_gap(curve({15: 0.3, 26: 0.6})) > UNCERTAIN_GAP
    near = curve({15: 0.3})
    near[17] = 0.31  # a dip 2 frames away is the same minimum's shoulder, not a rival
    assert rival_gap(near) == 1.0
    edge = curve({15: 0.3})
    edge[0] = 0.305  # the curve's end counts when it is lower than its one neighbour
    assert rival_gap(edge) < UNCERTAIN_GAP
    with_nan = curve({15: 0.3, 5: 0.32})
    with_nan[:3] = np.nan
    assert rival_gap(with_nan) == pytest.approx(0.02 / (np.nanmedian(with_nan) - 0.3))


def test_rival_names_the_other_candidate_and_takes_the_reported_best():
    c = curve({15: 0.3, 26: 0.31})
    assert rival(c) == (pytest.approx(0.01 / (np.median(c) - 0.3)), 26)
    assert rival(curve({15: 0.3})) == (1.0, None)
    tie = curve({10: 0.3, 20: 0.3})
    assert rival(tie) == (0.0, 20) and rival(tie, best=20) == (0.0, 10)  # a tie names the one not reported
