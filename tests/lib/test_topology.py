"""Barcodes and RTD on point clouds of known topology, against giotto-ph and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aelab.functional.topology import (
    barcodes,
    h0_barcode,
    minimum_spanning_tree,
    mst_length,
    r_cross_barcode,
    r_cross_matrix,
    rtd,
    rtd_h0,
)

gph = pytest.importorskip("gph")


def two_clusters(n=20, gap=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x[n // 2:, 0] += gap
    return x


def circle(n=40, noise=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    return torch.stack([t.cos(), t.sin()], 1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def dist(x):
    return torch.cdist(x, x)


def brute_force_mst_length(d):
    # Kruskal with a union-find, in plain Python: an independent second implementation
    n = d.shape[0]
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    total = 0.0
    for w, i, j in sorted((float(d[i, j]), i, j) for i in range(n) for j in range(i + 1, n)):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            total += w
    return total


def test_mst_matches_kruskal_and_is_a_tree():
    x = torch.randn(25, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = dist(x)
    edges = minimum_spanning_tree(d)
    assert edges.shape == (24, 2)
    assert len(set(edges.flatten().tolist())) == 25  # spans every vertex
    assert math.isclose(mst_length(d).item(), brute_force_mst_length(d), rel_tol=1e-12)


def test_h0_matches_giotto_ph():
    d = dist(torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    ours = h0_barcode(d).deaths.numpy()
    dgm = gph.ripser_parallel(d.numpy(), metric="precomputed", maxdim=0)["dgms"][0]
    theirs = np.sort(dgm[np.isfinite(dgm[:, 1]), 1])
    assert np.allclose(np.sort(ours), theirs)


def test_two_clusters_give_one_long_h0_bar():
    bars = h0_barcode(dist(two_clusters(gap=10.0)))
    lengths = bars.lengths.sort(descending=True).values
    assert lengths[0] > 8.0  # the gap between the clusters (10 minus their spread)
    assert lengths[1] < 1.0  # every other merge happens inside a cluster


def test_circle_gives_one_long_h1_bar():
    h0, h1 = barcodes(dist(circle()), maxdim=1)
    lengths = h1.lengths.sort(descending=True).values
    assert lengths[0] > 1.0  # born near the spacing 2 pi / 40, dies near sqrt(3) (an inscribed triangle)
    assert len(lengths) == 1 or lengths[1] < 0.1
    assert h1.births[h1.lengths.argmax()] < 0.3
    # births and deaths are the lengths of the critical edges
    d = dist(circle())
    assert torch.equal(h1.deaths, d[h1.death_edges[:, 0], h1.death_edges[:, 1]])


def test_two_clusters_have_no_long_h1_bar():
    (_, h1) = barcodes(dist(two_clusters()), maxdim=1)
    assert len(h1) == 0 or h1.lengths.max() < 0.5


def test_rtd_of_a_cloud_with_itself_is_zero():
    d = dist(circle())
    assert rtd(d, d).item() == 0.0
    assert rtd_h0(d, d).item() == 0.0


def test_rtd_grows_with_the_perturbation():
    x = circle(n=30)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values = [rtd(dist(x), dist(x + s * noise)).item() for s in (0.05, 0.2, 0.8)]
    assert 0 < values[0] < values[1] < values[2], values
    values_h0 = [rtd_h0(dist(x), dist(x + s * noise)).item() for s in (0.05, 0.2, 0.8)]
    assert 0 < values_h0[0] < values_h0[1] < values_h0[2], values_h0


def test_merging_two_clusters_is_one_r_cross_bar_equal_to_rtd_h0():
    a = two_clusters(gap=10.0)
    b = a.clone()
    b[10:, 0] -= 7.0  # the same clusters, 3 apart instead of 10
    d_a, d_b = dist(a), dist(b)
    bars = r_cross_barcode(d_a, d_b, maxdim=1)[1]
    lengths = bars.lengths.sort(descending=True).values
    assert lengths[0] > 6.0 and (len(lengths) == 1 or lengths[1] < 0.5)
    # its total is the closed form MST(D_A) - MST(min(D_A, D_B))
    assert math.isclose(bars.lengths.sum().item(), rtd_h0(d_a, d_b, symmetric=False).item(), rel_tol=1e-9)
    # nothing merges in B that A has merged already: the other direction is empty
    assert rtd_h0(d_b, d_a, symmetric=False).item() == pytest.approx(0.0, abs=1e-12)


def test_rtd_h0_is_a_lower_bound_of_rtd():
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        a = torch.randn(20, 3, generator=g, dtype=torch.float64)
        b = a + 0.5 * torch.randn(20, 3, generator=g, dtype=torch.float64)
        assert rtd_h0(dist(a), dist(b)).item() <= rtd(dist(a), dist(b)).item() + 1e-12


def test_r_cross_matrix_blocks():
    d_a, d_b = dist(circle(n=5)), dist(circle(n=5, seed=1))
    m = r_cross_matrix(d_a, d_b)
    assert m.shape == (10, 10) and torch.equal(m, m.T)
    assert torch.equal(m[:5, :5], torch.zeros(5, 5, dtype=m.dtype))
    assert torch.equal(m[5:, :5], d_a) and torch.equal(m[5:, 5:], torch.minimum(d_a, d_b))


@pytest.mark.parametrize("fn", [rtd, rtd_h0], ids=["rtd", "rtd_h0"])
def test_gradient_matches_finite_differences(fn):
    # away from ties the barcode is locally a fixed set of edges: the gradient is exact
    a = circle(n=12, noise=0.1, seed=5)
    b = (a + 0.3 * torch.randn(a.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)).requires_grad_(True)
    value = fn(dist(a), dist(b))
    value.backward()
    assert b.grad.abs().sum() > 0
    eps = 1e-6
    numeric = torch.zeros_like(b)
    with torch.no_grad():
        for i in range(b.shape[0]):
            for j in range(b.shape[1]):
                e = torch.zeros_like(b)
                e[i, j] = eps
                numeric[i, j] = (fn(dist(a), dist(b + e)) - fn(dist(a), dist(b - e))) / (2 * eps)
    assert torch.allclose(b.grad, numeric, atol=1e-5), (b.grad - numeric).abs().max()


def test_gradient_reaches_only_the_critical_edges():
    d = dist(circle(n=10)).clone().requires_grad_(True)
    bars = h0_barcode(d)
    bars.deaths.sum().backward()
    nonzero = set(map(tuple, d.grad.nonzero().tolist()))
    assert nonzero == set(map(tuple, bars.death_edges.tolist()))


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="square"):
        h0_barcode(torch.rand(4, 3))
    with pytest.raises(ValueError, match="same points"):
        rtd(dist(circle(n=5)), dist(circle(n=6)))
    with pytest.raises(ValueError, match="dims"):
        rtd(dist(circle(n=5)), dist(circle(n=5)), dims=(0,))
