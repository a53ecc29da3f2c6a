"""Persistence barcodes of point clouds and the Representation Topology Divergence (RTD).

Vietoris-Rips filtration of a distance matrix D (N, N): at scale alpha, the complex with an edge
i-j when D_ij <= alpha and a simplex wherever all its edges are present. A bar [birth, death) of
H_k is a k-dimensional hole (H0: a connected component, H1: a loop) alive between those scales.
Every birth and death is the length of one *critical edge* of D, so a bar is differentiable: its
gradient is the gradient of D at that edge (Leygonie et al. 2022). Functions here return bars as
tensors gathered from D at the critical edges, so ``loss.backward()`` reaches the points.

H0 is computed in PyTorch: the H0 deaths of a Vietoris-Rips filtration are the edge lengths of a
minimum spanning tree (Kruskal's algorithm is the H0 persistence algorithm; births are all 0).
Higher dimensions come from ``giotto-ph`` (``ripser_parallel(..., return_generators=True)``, which
returns the critical edges).

RTD (Barannikov et al. 2022, "Representation Topology Divergence: a method for comparing neural
network representations"): for two clouds with the same indexing and distance matrices D_A, D_B,
the **R-cross-barcode** is the barcode of the Vietoris-Rips filtration on 2N vertices
(A_1..A_N, B_1..B_N) with the distance matrix

    M = [[0,   D_A           ],
         [D_A, min(D_A, D_B) ]]

(the A copies are glued at 0; A_i - B_j has length D_A[i, j]). Its bars in H_k (k >= 1) are the
topological features of the cloud with distances min(D_A, D_B) that D_A does not have: in H_1,
clusters that min(D_A, D_B) has already merged but D_A has not (born at the merge in min, dead at the
merge in D_A), and loops of min(D_A, D_B) that D_A lacks. RTD_k(A, B) is the sum of the bar lengths in
H_k; it is 0 when D_A = D_B. The usual loss is symmetric, (RTD(A, B) + RTD(B, A)) / 2.

The H0-merge part of R-cross-barcode_1 has a closed form: its total length is
int (beta_0(D_A at alpha) - beta_0(min at alpha)) d alpha = MST(D_A) - MST(min(D_A, D_B)), the
difference of the two spanning trees' total lengths (``rtd_h0``, pure PyTorch, no package needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _check_distances(d: Tensor, name: str = "distances") -> Tensor:
    if not isinstance(d, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor distance matrix, got {type(d).__name__}")
    if d.dim() != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) distance matrix, got shape {tuple(d.shape)}; "
                         "use torch.cdist(x, x) for points x (N, dim)")
    if d.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 points, got {d.shape[0]}")
    return d


@dataclass
class Barcode:
    """Bars of one homology dimension: births, deaths (K,) gathered from a distance matrix, and their edges."""

    births: Tensor
    """(K,) scale at which each feature appears (differentiable)."""
    deaths: Tensor
    """(K,) scale at which each feature disappears (differentiable); only finite bars are kept."""
    birth_edges: Tensor
    """(K, 2) long: the critical edge (i, j) whose length is the birth (H0: (v, v), length 0)."""
    death_edges: Tensor
    """(K, 2) long: the critical edge whose length is the death."""

    @property
    def lengths(self) -> Tensor:
        """(K,) death - birth."""
        return self.deaths - self.births

    def __len__(self) -> int:
        return int(self.births.shape[0])


def minimum_spanning_tree(d: Tensor) -> Tensor:
    """Edges (N - 1, 2) long of a minimum spanning tree of the complete graph with weights d (N, N).

    Prim's algorithm with tensor operations (N steps of O(N) work); the tree is found without
    gradients, its edge lengths ``d[edges[:, 0], edges[:, 1]]`` carry them.
    """
    d = _check_distances(d)
    with torch.no_grad():
        w = d.detach()
        n = w.shape[0]
        in_tree = torch.zeros(n, dtype=torch.bool, device=w.device)
        in_tree[0] = True
        best = w[0].clone()  # distance of every vertex to the tree
        parent = torch.zeros(n, dtype=torch.long, device=w.device)
        edges = []
        inf = torch.tensor(float("inf"), dtype=w.dtype, device=w.device)
        for _ in range(n - 1):
            v = int(torch.where(in_tree, inf, best).argmin())
            edges.append((int(parent[v]), v))
            in_tree[v] = True
            closer = w[v] < best
            best = torch.where(closer, w[v], best)
            parent = torch.where(closer, torch.full_like(parent, v), parent)
    return torch.tensor(edges, dtype=torch.long, device=d.device).view(-1, 2)


def h0_barcode(d: Tensor) -> Barcode:
    """H0 bars of the Vietoris-Rips filtration of d (N, N): N - 1 finite bars [0, death), in PyTorch.

    Every point is born at 0; each spanning-tree edge, in order of length, merges two components
    and kills one bar (the infinite bar of the last component is left out). Sorted by death.
    """
    edges = minimum_spanning_tree(d)
    deaths = d[edges[:, 0], edges[:, 1]]
    order = deaths.detach().argsort()
    edges, deaths = edges[order], deaths[order]
    return Barcode(torch.zeros_like(deaths), deaths, torch.stack([edges[:, 1], edges[:, 1]], 1), edges)


def _ripser(m: np.ndarray, maxdim: int) -> dict:
    try:
        from gph import ripser_parallel
    except ImportError as e:  # pragma: no cover - giotto-ph is in the course environment
        raise ImportError(
            "H1 and higher barcodes need giotto-ph: pip install giotto-ph==0.2.4 (H0 and rtd_h0 work without it)"
        ) from e
    return ripser_parallel(m, metric="precomputed", maxdim=maxdim, return_generators=True)


def barcodes(d: Tensor, maxdim: int = 1) -> list[Barcode]:
    """Finite bars of H_0 .. H_maxdim of the Vietoris-Rips filtration of d (N, N), via giotto-ph.

    Births and deaths are gathered from d at the critical edges that giotto-ph returns, so they are
    differentiable. H0 comes from ``h0_barcode`` (the same bars; a test checks it against giotto-ph's).
    """
    d = _check_distances(d)
    if maxdim < 0:
        raise ValueError(f"maxdim must be >= 0, got {maxdim}")
    out = [h0_barcode(d)]
    if maxdim == 0:
        return out
    gens = _ripser(d.detach().cpu().double().numpy(), maxdim)["gens"]
    for k in range(1, maxdim + 1):
        g = torch.as_tensor(np.asarray(gens[1][k - 1]).reshape(-1, 4), dtype=torch.long, device=d.device)  # (K, 4)
        births, deaths = d[g[:, 0], g[:, 1]], d[g[:, 2], g[:, 3]]
        out.append(Barcode(births, deaths, g[:, :2], g[:, 2:]))
    return out


def r_cross_matrix(d_a: Tensor, d_b: Tensor) -> Tensor:
    """The (2N, 2N) matrix [[0, D_A], [D_A, min(D_A, D_B)]] whose barcode is the R-cross-barcode."""
    d_a, d_b = _check_distances(d_a, "d_a"), _check_distances(d_b, "d_b")
    if d_a.shape != d_b.shape:
        raise ValueError(f"d_a and d_b must index the same points, got shapes {tuple(d_a.shape)} and {tuple(d_b.shape)}")
    top = torch.cat([torch.zeros_like(d_a), d_a], dim=1)
    bottom = torch.cat([d_a, torch.minimum(d_a, d_b)], dim=1)
    return torch.cat([top, bottom], dim=0)


def r_cross_barcode(d_a: Tensor, d_b: Tensor, maxdim: int = 1) -> list[Barcode]:
    """Finite bars of H_0 .. H_maxdim of the R-cross-barcode of (d_a, d_b), each (N, N); H0 is empty.

    Differentiable through the critical edges of the (2N, 2N) matrix ``r_cross_matrix``.
    """
    if maxdim < 1:
        raise ValueError(f"the R-cross-barcode carries information from H1 on: maxdim must be >= 1, got {maxdim}")
    return barcodes(r_cross_matrix(d_a, d_b), maxdim)


def rtd(d_a: Tensor, d_b: Tensor, dims: tuple[int, ...] = (1,), symmetric: bool = True) -> Tensor:
    """RTD: total bar length of the R-cross-barcode in ``dims``, 0-dim tensor (giotto-ph).

    ``symmetric``: (RTD(A, B) + RTD(B, A)) / 2, the loss of Barannikov et al. and of TopDis.
    """
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be R-cross-barcode dimensions >= 1, got {dims}")

    def one_way(x: Tensor, y: Tensor) -> Tensor:
        bars = r_cross_barcode(x, y, max(dims))
        return sum((bars[k].lengths.sum() for k in dims), x.new_zeros(()))

    if not symmetric:
        return one_way(d_a, d_b)
    return 0.5 * (one_way(d_a, d_b) + one_way(d_b, d_a))


def mst_length(d: Tensor) -> Tensor:
    """Total edge length of a minimum spanning tree of d (N, N): the sum of the H0 bar lengths, 0-dim."""
    edges = minimum_spanning_tree(d)
    return d[edges[:, 0], edges[:, 1]].sum()


def rtd_h0(d_a: Tensor, d_b: Tensor, symmetric: bool = True) -> Tensor:
    """The cluster part of RTD_1 in closed form, in PyTorch: MST(D_A) - MST(min(D_A, D_B)) >= 0, 0-dim.

    It is the total length of the R-cross-barcode_1 bars that record merges of components (see the
    module docstring); the full RTD_1 adds the loops of min(D_A, D_B) that D_A lacks.
    ``symmetric``: the mean of both directions, MST(D_A) + MST(D_B) - 2 MST(min(D_A, D_B)), halved.
    """
    d_a, d_b = _check_distances(d_a, "d_a"), _check_distances(d_b, "d_b")
    if d_a.shape != d_b.shape:
        raise ValueError(f"d_a and d_b must index the same points, got shapes {tuple(d_a.shape)} and {tuple(d_b.shape)}")
    low = mst_length(torch.minimum(d_a, d_b))
    if not symmetric:
        return mst_length(d_a) - low
    return 0.5 * (mst_length(d_a) + mst_length(d_b)) - low
