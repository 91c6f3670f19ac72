"""Nearest neighbours of a point set (a k-d tree: O(N log N), so a million Gaussians take seconds), for the
initial scales of 3DGS (stage1/init.py) and the statistical outliers of the end-of-run prune (stage1/densify.py)."""

from __future__ import annotations

import numpy as np


def knn_distances(points: np.ndarray, k: int) -> np.ndarray:
    """Distances of each point to its nearest other points.

    Args:
        points: [N,3] positions.
        k: neighbours wanted; capped at N − 1.
    Returns:
        [N, min(k, N−1)] float64 distances, ascending along each row ([N,0] when N < 2).
    """
    from scipy.spatial import cKDTree

    n = points.shape[0]
    kk = min(k, n - 1)
    if kk < 1:
        return np.zeros((n, 0), np.float64)
    dist, _ = cKDTree(points).query(points, k=kk + 1)  # column 0 is the point itself (or a duplicate of it)
    return dist[:, 1:]
