"""What the official ConsistentID training code makes of a parsing mask, re-implemented for
tests and eval (read from its `functions.py::masks_for_unique_values` and `utils.py::MyDataset`
for the facts; no code copied).

For every label value the official loader draws the OUTER contours of that value's pixels filled
(cv2.RETR_EXTERNAL); for value 0 it inverts that filled shape and calls it "WithoutBackground",
the foreground its training multiplies prediction and target by. So a background that surrounds
the person (a face island on background) fills the whole frame and leaves an empty foreground.
Its region table keeps, per pair, only the first of Left_/Right_ it meets in id order: label 4
(l_eye) and 7 (l_ear) are "the eye" and "the ear".
"""

from __future__ import annotations

import cv2
import numpy as np

# The ids the official table names for the parts its training uses (the rest it also names,
# partly wrongly, but does not use).
OFFICIAL_PARTS = {1: "Face", 4: "Left_Eye", 5: "Right_Eye", 7: "Left_Ear", 8: "Right_Ear",
                  10: "Nose", 12: "Upper_Lip", 13: "Lower_Lip"}  # fmt: skip


def filled_outer(mask: np.ndarray, value: int) -> np.ndarray:
    """(H, W) bool: the outer contours of `mask == value`, filled."""
    binary = (np.asarray(mask) == value).astype(np.uint8) * 255
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(binary.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    return out > 0


def official_foreground(mask: np.ndarray) -> np.ndarray:
    """The official "WithoutBackground" mask: label 0's filled outer contours, inverted."""
    return ~filled_outer(mask, 0)


def official_region_masks(mask: np.ndarray) -> dict[str, np.ndarray]:
    """The facial part masks the official loader keeps (one of each Left_/Right_ pair)."""
    out: dict[str, np.ndarray] = {}
    taken: set[str] = set()
    for value in np.unique(mask):
        name = OFFICIAL_PARTS.get(int(value))
        if name is None:
            continue
        side_of = name.split("_", 1)[1] if "_" in name else None
        if side_of is not None and side_of in taken:
            continue
        if side_of is not None:
            taken.add(side_of)
        out[name] = filled_outer(mask, int(value))
    return out
