"""What one mask says about its classes: pixel counts, objects (connected components), objects
that touch, and where each class sits vertically. Pure NumPy/SciPy functions of one mask.

- An **object** of a class is a 4-connected component of its pixels (two pixels that share only
  a corner are two objects). Objects cut by the image border count with their visible area.
- Two objects of one class **touch** when at most `TOUCH_GAP` pixels of anything else (another
  class, ignored pixels) lie between them, i.e. some pixel of one is within Chebyshev distance
  ``TOUCH_GAP + 1`` of a pixel of the other: cells separated by a thin membrane (ISBI), cars
  parked bumper to bumper. Those are the objects a border weight (UNet's w0 * exp(-(d1 + d2)^2
  / 2 sigma^2)) keeps apart. Objects of different classes are not counted as touching.
- A class's **row** in an image is the mean row of its pixels over the image height, 0 (top) to
  1 (bottom). Class a is **above** class b in an image when both are present and a's row is
  smaller than b's by more than `ABOVE_MARGIN`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TOUCH_GAP = 2
"""Objects of one class separated by at most this many pixels of something else touch."""
ABOVE_MARGIN = 0.1
"""Class a is above class b in an image when its mean row is smaller by more than this
fraction of the height."""
SIZE_BINS_PER_OCTAVE = 8
"""Object areas are tallied in bins of 2 ** (1 / 8) (about 9% wide): bounded, mergeable."""
SIZE_BINS = SIZE_BINS_PER_OCTAVE * 40
"""Bins up to 2 ** 40 pixels (larger areas land in the last bin)."""


def class_pixels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) pixel counts of each class index (other values, e.g. ignore, not)."""
    counts = np.bincount(mask.ravel(), minlength=max(num_classes, int(mask.max(initial=0)) + 1))
    return counts[:num_classes].astype(np.int64)


def size_bin(areas: np.ndarray) -> np.ndarray:
    """The bin of each area (>= 1 pixel) in the log-spaced object-size histogram."""
    bins = np.floor(np.log2(np.maximum(areas, 1)) * SIZE_BINS_PER_OCTAVE).astype(np.int64)
    return np.minimum(bins, SIZE_BINS - 1)


def bin_area(index: float) -> float:
    """The area at the geometric middle of a histogram bin (fractional indices interpolate)."""
    return float(2 ** ((index + 0.5) / SIZE_BINS_PER_OCTAVE))


def objects_of(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """(areas of the 4-connected components of ``binary``, how many of them touch another)."""
    labels, count = ndimage.label(binary)  # 4-connectivity: the default structure in 2D
    if count < np.iinfo(np.uint16).max:
        labels = labels.astype(np.uint16)  # half the memory traffic of the filters below
    if count == 0:
        return np.zeros(0, np.int64), 0
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    if count == 1:
        return areas, 0
    window = 2 * TOUCH_GAP + 3  # Chebyshev distance <= TOUCH_GAP + 1 either side
    nearest_high = ndimage.maximum_filter(labels, size=window, mode="constant", cval=0)
    low = np.where(labels > 0, labels, count + 1)
    nearest_low = ndimage.minimum_filter(low, size=window, mode="constant", cval=count + 1)
    near_other = (labels > 0) & ((nearest_high > labels) | (nearest_low < labels))
    return areas, int(np.count_nonzero(np.bincount(labels[near_other], minlength=count + 1)))


def class_rows(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) mean row of each class's pixels over the height (0 top, 1 bottom); NaN
    for an absent class."""
    height, width = mask.shape
    k = max(num_classes, int(mask.max(initial=0)) + 1)
    row_of = np.repeat(np.arange(height, dtype=np.int64), width)
    per_row = np.bincount(row_of * k + mask.ravel(), minlength=height * k).reshape(height, k)
    totals = per_row.sum(axis=0)[:num_classes]  # (K,) pixels per class
    weighted = (per_row[:, :num_classes] * np.arange(height)[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weighted / totals / max(height - 1, 1), np.nan)


def above_matrix(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(both, above): (K, K) 0/1 matrices of one image; both[a, b] when a and b are present,
    above[a, b] when a's row is smaller than b's by more than ABOVE_MARGIN."""
    present = ~np.isnan(rows)
    both = (present[:, None] & present[None, :]).astype(np.int64)
    np.fill_diagonal(both, 0)
    filled = np.where(present, rows, 0.0)
    above = (both > 0) & (filled[:, None] + ABOVE_MARGIN < filled[None, :])
    return both, above.astype(np.int64)
