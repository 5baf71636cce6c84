"""FID: the Frechet distance against its closed form, FID's Inception from a weights file the test builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.inception import FEATURES, FIDInception, load_fid_inception
from pipeline.nets.metrics import fid_features, frechet_distance


def exact(mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """8 samples whose sample mean is mu and sample covariance (N - 1) exactly diag(var): zero-mean,
    mutually orthogonal +-1 columns (Walsh functions) scaled to norm sqrt(7)."""
    walsh = np.array([[1, 1, 1, 1, -1, -1, -1, -1], [1, 1, -1, -1, 1, 1, -1, -1], [1, -1, 1, -1, 1, -1, 1, -1]])
    cols = walsh[: len(mu)].T * np.sqrt(7 / 8)
    return mu + cols * np.sqrt(var)


def test_frechet_distance_matches_the_closed_form_of_diagonal_gaussians():
    mu1, v1 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 4.0, 0.25])
    mu2, v2 = np.array([0.5, 1.0, 0.0]), np.array([2.0, 1.0, 0.25])
    a, b = exact(mu1, v1), exact(mu2, v2)
    assert np.allclose(np.cov(a, rowvar=False), np.diag(v1))
    want = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    one = frechet_distance(exact(np.array([1.0]), np.array([4.0])), exact(np.array([3.0]), np.array([9.0])))
    assert one == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)  # 1-D: (m1 - m2)^2 + (s1 - s2)^2


def test_frechet_distance_of_rank_deficient_covariances_is_finite():
    """Fewer samples than dimensions (a short test split): singular covariances, as FID often has."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 0.3
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(a[:1], b)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """FID's Inception with random weights, saved as pytorch-fid's file is: a flat name -> tensor dict."""
    torch.manual_seed(0)
    model = FIDInception()
    for m in model.modules():  # non-trivial batch-norm statistics, as a trained file has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(dict(model.state_dict()), path)
    return path


def test_the_weights_file_loads_strictly_and_gives_pool3_features(weights):
    model = load_fid_inception(weights)
    frames = np.random.default_rng(1).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    feats = fid_features(model, frames, batch=2)
    assert feats.shape == (3, FEATURES) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert (feats >= 0).all()  # after a ReLU and an average
    one = fid_features(model, frames[1:2])
    assert np.allclose(one[0], feats[1], atol=1e-5)  # batching changes nothing


def test_a_wrong_weights_file_is_named_with_what_does_not_match(weights, tmp_path):
    with pytest.raises(PipelineError, match="Inception weights not found"):
        load_fid_inception(tmp_path / "absent.pth")
    state = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, tmp_path / "short.pth")
    with pytest.raises(PipelineError, match=r"missing \(e\.g\. Mixed_7c"):
        load_fid_inception(tmp_path / "short.pth")
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, tmp_path / "tv.pth")
    with pytest.raises(PipelineError, match=r"another shape \(e\.g\. fc\.weight: \(1000, 2048\), not \(1008, 2048\)"):
        load_fid_inception(tmp_path / "tv.pth")  # torchvision's ImageNet Inception is not FID's
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(PipelineError, match="not a torch weights file"):
        load_fid_inception(tmp_path / "text.pth")
