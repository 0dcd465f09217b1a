"""Quality figures recorded per face: sharpness, head pose and how much of the photo it fills.

Head pose comes from the five points alone (so every detector backend gets the same figure):
- roll is the angle of the eye line;
- yaw comes from `cv2.solvePnP` (SQPnP) fitting a generic adult face (`GENERIC_FACE_5`,
  millimetres) to the five points with a pinhole camera whose focal length is the photo's longer
  side and whose centre is the photo's centre;
- pitch comes from how far the nose tip sits below the eye line, relative to the eye distance
  (corrected for yaw), solved on the same generic face. The mouth corners are left out of pitch
  on purpose: a smile lifts them and would read as a face tilted down.
Five points and a generic face give angles good to roughly +-10 degrees: enough to tell
frontal from three-quarter from profile, not a measurement to regress on.

Sign conventions (image frame, as the viewer sees the photo):
- yaw > 0: the nose points to the image's right (the person turned to their own left);
- pitch > 0: the face points up;
- roll > 0: the image-right eye is lower than the image-left eye (head tilted clockwise).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Eye centres, nose tip, mouth corners in LANDMARKS5_NAMES order; camera axes (x right, y down,
# z away from the camera) for a face looking straight into the lens, nose tip at the origin.
# The in-plane proportions match the medians of the dlib points on the shared deepface photos
# (eye-to-mouth / eye distance 1.02, mouth width / eye distance 0.91, nose tip 55% of the way
# from the eye line to the mouth line), so a typical portrait reads as pitch ~0.
GENERIC_FACE_5 = np.array(
    [
        [-31.5, -35.0, 27.0],  # image-left eye centre (the person's right eye)
        [31.5, -35.0, 27.0],  # image-right eye centre
        [0.0, 0.0, 0.0],  # nose tip
        [-28.5, 28.0, 22.0],  # image-left mouth corner
        [28.5, 28.0, 22.0],  # image-right mouth corner
    ],
    dtype=np.float64,
)


def laplacian_variance(portrait: np.ndarray, landmarks5: np.ndarray) -> float:
    """Variance of the Laplacian of the grey face region of the portrait (higher = sharper).

    Measured on the 512 portrait, so a small face upscaled into it reads as blurry: that is the
    sharpness the training images will actually have.
    """
    grey = cv2.cvtColor(portrait, cv2.COLOR_RGB2GRAY) if portrait.ndim == 3 else portrait
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    pad = 0.25 * max(x1 - x0, y1 - y0, 1.0)
    h, w = grey.shape
    xa, ya = int(max(0, math.floor(x0 - pad))), int(max(0, math.floor(y0 - pad)))
    xb, yb = int(min(w, math.ceil(x1 + pad))), int(min(h, math.ceil(y1 + pad)))
    region = grey[ya:yb, xa:xb]
    if region.size < 9:
        return 0.0
    return float(cv2.Laplacian(region, cv2.CV_64F, ksize=3).var())


def roll_degrees(landmarks5: np.ndarray) -> float:
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    dx, dy = lm[1] - lm[0]
    return math.degrees(math.atan2(dy, dx))


def head_pose(landmarks5: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the five points in a `width` x `height` photo."""
    roll = roll_degrees(landmarks5)
    pts = np.asarray(landmarks5, dtype=np.float64).reshape(5, 1, 2)
    f = float(max(width, height))
    cam = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    ok, rvec, _ = cv2.solvePnP(
        GENERIC_FACE_5.reshape(5, 1, 3), pts, cam, None, flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok:
        return 0.0, 0.0, roll
    rot, _ = cv2.Rodrigues(rvec)
    # The face's forward direction (towards the camera is -z in camera axes).
    fwd = rot @ np.array([0.0, 0.0, -1.0])
    yaw = math.degrees(math.atan2(fwd[0], -fwd[2]))
    return yaw, _pitch_from_nose(landmarks5, yaw), roll


def _pitch_from_nose(landmarks5: np.ndarray, yaw: float) -> float:
    """Pitch from the nose tip's drop below the eye line: on the generic face the drop is
    `eye_y cos(p) - depth sin(p)` for an eye distance of `2 eye_x cos(yaw)`."""
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    eye_vec = lm[1] - lm[0]
    iod = float(np.hypot(*eye_vec))
    if iod < 1e-6:
        return 0.0
    down = np.array([-eye_vec[1], eye_vec[0]]) / iod  # perpendicular to the eye line, downwards
    drop = float(np.dot(lm[2] - (lm[0] + lm[1]) / 2, down))
    eye_x, eye_y, depth = GENERIC_FACE_5[1]
    model_iod = 2 * eye_x * max(math.cos(math.radians(yaw)), 0.3)
    drop_mm = drop / iod * model_iod
    radius = math.hypot(-eye_y, depth)
    phase = math.atan2(depth, -eye_y)
    c = max(-1.0, min(1.0, drop_mm / radius))
    return math.degrees(math.acos(c) - phase)


def area_ratio(bbox: tuple[float, float, float, float] | list, width: int, height: int) -> float:
    """Face box area (clipped to the photo) over photo area."""
    x0, y0, x1, y1 = bbox
    x0, x1 = max(0.0, float(x0)), min(float(width), float(x1))
    y0, y1 = max(0.0, float(y0)), min(float(height), float(y1))
    area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return area / float(width * height) if width and height else 0.0
