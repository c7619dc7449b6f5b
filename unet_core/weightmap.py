"""The U-Net paper's border weight map (Ronneberger et al. 2015, eq. 2), and the connected
components it (and the Rand error of `unet_core.metrics`) is built on. NumPy only.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

d1 and d2 are the distances from a background pixel to the nearest and the second-nearest
object (a connected component of the ``foreground`` class), so the thin background between two
touching objects weighs most. Distances are Euclidean, between pixel centres, computed exactly
per object in a window around it: only objects within the cutoff radius where the border term
falls below ``BORDER_TOLERANCE`` are looked at, so the map is exact to that tolerance.
"""

from __future__ import annotations

import math

import numpy as np

from unet_core.config import IGNORE_INDEX

__all__ = ["BORDER_TOLERANCE", "border_weight_map", "class_balance_weights", "label_components"]

BORDER_TOLERANCE = 1e-4
"""The border term is computed exactly where it exceeds this, and 0 elsewhere."""


def label_components(binary: np.ndarray, *, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Connected components of an HxW boolean image: (int32 labels, count); 0 = not in any,
    1..count numbered in raster order of each component's first pixel.

    ``connectivity`` 4 (edge neighbours: a one-pixel diagonal line of background separates two
    objects) or 8 (also corner neighbours). Vectorised union-find: every round hooks each root
    to the smallest root it touches and compresses paths, until no edge joins two roots.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    fg = np.asarray(binary, dtype=bool)
    if fg.ndim != 2:
        raise ValueError(f"expected an HxW binary image, got shape {fg.shape}")
    h, w = fg.shape
    labels = np.zeros((h, w), dtype=np.int32)
    pixels = np.flatnonzero(fg)
    if pixels.size == 0:
        return labels, 0
    node = np.full(h * w, -1, dtype=np.int64)
    node[pixels] = np.arange(pixels.size)
    grid = node.reshape(h, w)
    pairs = [(grid[:, :-1], grid[:, 1:]), (grid[:-1, :], grid[1:, :])]
    if connectivity == 8:
        pairs += [(grid[:-1, :-1], grid[1:, 1:]), (grid[:-1, 1:], grid[1:, :-1])]
    a = np.concatenate([p[(p >= 0) & (q >= 0)] for p, q in pairs])
    b = np.concatenate([q[(p >= 0) & (q >= 0)] for p, q in pairs])
    parent = np.arange(pixels.size)
    while a.size:
        ra, rb = parent[a], parent[b]
        joined = ra != rb
        if not joined.any():
            break
        a, b, ra, rb = a[joined], b[joined], ra[joined], rb[joined]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # path compression: every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    is_root = parent == np.arange(pixels.size)  # a root is its component's first pixel
    numbers = np.cumsum(is_root, dtype=np.int32)  # 1.. in raster order of the roots
    labels.flat[pixels] = numbers[parent]
    return labels, int(numbers[-1])


def class_balance_weights(mask: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(K,) float32 w_c: n_valid / (classes present * n_k), so the valid pixels of ``mask``
    average 1 and every present class weighs the same in total; 0 for absent classes."""
    mask = np.asarray(mask)
    valid = mask[mask != IGNORE_INDEX].astype(np.int64)
    k = int(num_classes if num_classes is not None else (valid.max() + 1 if valid.size else 1))
    counts = np.bincount(valid, minlength=k).astype(np.float64)
    present = counts > 0
    weights = np.zeros(k, dtype=np.float64)
    weights[present] = valid.size / (present.sum() * counts[present])
    return weights.astype(np.float32)


def _cutoff(w0: float, sigma: float) -> float:
    """Largest d2 at which the border term can still exceed BORDER_TOLERANCE (d1 >= 0)."""
    if w0 <= BORDER_TOLERANCE:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / BORDER_TOLERANCE))


def _squared_distances(obj: np.ndarray, radius: int) -> np.ndarray:
    """Exact squared distance to the nearest True pixel of ``obj``, where at most ``radius``
    (larger values are not exact: read them as "beyond"). Columns first (nearest object pixel
    above and below), then rows: min over |dx| <= radius of dx**2 + g(x + dx)**2."""
    h, w = obj.shape
    big = h + w + radius + 1
    rows = np.arange(h)[:, None]
    above = np.maximum.accumulate(np.where(obj, rows, -big), axis=0)
    below = np.minimum.accumulate(np.where(obj, rows, 2 * big)[::-1], axis=0)[::-1]
    g = np.minimum(rows - above, below - rows).astype(np.float32)  # (h, w) column distance
    g2 = np.pad(g * g, ((0, 0), (radius, radius)), constant_values=np.float32(big) ** 2)
    out = g2[:, radius : radius + w].copy()  # dx = 0
    for dx in range(1, radius + 1):  # contiguous slices: faster than one strided reduction
        step = np.float32(dx * dx)
        np.minimum(out, g2[:, radius + dx : radius + dx + w] + step, out=out)
        np.minimum(out, g2[:, radius - dx : radius - dx + w] + step, out=out)
    return out


def border_weight_map(
    mask: np.ndarray,
    *,
    foreground: int | None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    num_classes: int | None = None,
    connectivity: int = 4,
) -> np.ndarray:
    """(H, W) float32 weights of eq. 2 of the U-Net paper for an HxW mask of class indices.

    Args:
        foreground: the class whose connected components are the objects (ISBI 2012: the cell
            class, not the membrane); None: no border term, the map is w_c alone.
        w0, sigma: height (10 in the paper) and width in pixels (5) of the border term, which
            only background pixels (valid, not ``foreground``) get.
        class_balance: w_c = `class_balance_weights` of this mask; off: w_c = 1.
        num_classes: classes of the task (for w_c); None: the largest class in the mask + 1.
        connectivity: 4 or 8, as in `label_components`.

    Pixels that are IGNORE_INDEX weigh 0 (no loss counts them anyway).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask of class indices, got shape {mask.shape}")
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"w0 must be >= 0 and sigma > 0 pixels, got {w0} and {sigma}")
    valid = mask != IGNORE_INDEX
    if class_balance:
        table = class_balance_weights(mask, num_classes)
        weights = np.where(valid, table[np.where(valid, mask, 0).astype(np.int64)], 0.0)
    else:
        weights = valid.astype(np.float32)
    weights = weights.astype(np.float32)
    radius = math.ceil(_cutoff(w0, sigma))
    if foreground is None or radius == 0:
        return weights
    labels, count = label_components(mask == foreground, connectivity=connectivity)
    h, w = mask.shape
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    limit = np.float32(radius * radius)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    top, left = np.full(count + 1, h), np.full(count + 1, w)
    bottom, right = np.zeros(count + 1, np.int64), np.zeros(count + 1, np.int64)
    np.minimum.at(top, lab, ys)
    np.minimum.at(left, lab, xs)
    np.maximum.at(bottom, lab, ys)
    np.maximum.at(right, lab, xs)
    for k in range(1, count + 1):  # one window per object: its bounding box grown by the radius
        y0, y1 = max(int(top[k]) - radius, 0), min(int(bottom[k]) + radius + 1, h)
        x0, x1 = max(int(left[k]) - radius, 0), min(int(right[k]) + radius + 1, w)
        sq = _squared_distances(labels[y0:y1, x0:x1] == k, radius)
        d = np.where(sq <= limit, np.sqrt(sq), np.inf).astype(np.float32)
        n1, n2 = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]  # views: updated in place
        np.copyto(n2, np.where(d < n1, n1, np.minimum(n2, d)))
        np.minimum(n1, d, out=n1)
    background = valid & (mask != foreground) & np.isfinite(d2)
    total = d1[background] + d2[background]
    weights[background] += np.float32(w0) * np.exp(-(total * total) / np.float32(2 * sigma**2))
    return weights
