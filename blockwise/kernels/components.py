"""Connected components of a 3D mask and their bounding boxes (scipy.ndimage's numbering)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _components
from blockwise.kernels.checks import require_volume

__all__ = ["component_boxes", "label_components"]

#: provisional labels are int32: at most one per voxel
_MAX_VOXELS = 2**31 - 1


def label_components(
    mask: NDArray[np.bool_], planar: bool = False
) -> tuple[NDArray[np.int32], int]:
    """Number the connected components of ``mask`` 1..n in the order of their first voxel.

    The same labels as ``scipy.ndimage.label(mask, structure)`` with the
    6-connected structure (``generate_binary_structure(3, 1)``), or with
    ``planar`` its middle plane only (4-connected within each z-section, no
    component spans two sections), and one raster scan with a union-find
    instead of scipy's line-by-line passes.

    Args:
        mask: (z, y, x) bool.
        planar: components stay within one z-section.

    Returns:
        (z, y, x) int32 labels (0 outside ``mask``) and n.

    Raises:
        ValueError: if ``mask`` is not a 3D bool array or has 2**31 voxels or more.
    """
    require_volume("mask", mask, np.bool_)
    if mask.size > _MAX_VOXELS:
        raise ValueError(f"mask has {mask.size} voxels; at most {_MAX_VOXELS} fit the int32 labels")
    labels = np.empty(mask.shape, dtype=np.int32)
    count = _components.label_components(
        np.ascontiguousarray(mask).view(np.uint8), bool(planar), labels
    )
    return labels, int(count)


def component_boxes(labels: NDArray[np.int32], count: int) -> list[tuple[slice, ...] | None]:
    """The bounding box of each component 1..``count`` of ``labels``, as slices.

    The same as ``scipy.ndimage.find_objects(labels, count)``: entry ``k - 1``
    is the box of label ``k``, None for a label that does not occur.

    Raises:
        ValueError: if ``labels`` is not a 3D int32 array or ``count`` is negative.
    """
    require_volume("labels", labels, np.int32)
    if count < 0:
        raise ValueError(f"count must be at least 0, received {count}")
    boxes = np.zeros((count, 6), dtype=np.int64)
    boxes[:, :3] = np.iinfo(np.int64).max
    _components.component_boxes(np.ascontiguousarray(labels), boxes)
    return [
        None
        if box[3] == 0
        else tuple(slice(int(a), int(b)) for a, b in zip(box[:3], box[3:], strict=True))
        for box in boxes
    ]
