"""The embedded captioner: a measured-attribute describer (geometry + colour), not a language model.

It states only what it measured on the portrait: face shape from the jaw outline, eye size,
openness and spacing, brow thickness and arch, nose width and length, lip fullness, whether the
mouth is open or smiling, skin tone (ITA category of cheek pixels), hair colour where the parser
found hair unlike the skin, and head pose. It has no ear detector, so the ears caption is empty
and `measured` says so (`captions.measured.ears = false`): caption text is description only. It
never states gender, age, ethnicity or identity.

Words come from where a figure falls in the distribution of real faces: the tercile cuts below
are the 33rd/67th percentiles printed by `scripts/calibrate_captioner.py` on the 68 faces of the
shared deepface photos (64 photos, 13+ people); rerun it on a larger set to recalibrate. Skin tone
uses three wide ITA bands (Chardon et al. 1991; Del Bino et al. 2006). ITA is measured on the
photo as lit, so it describes the pixels, not the person.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fgid_builder.caption.regions import measure_face
from fgid_builder.detect.dlib_hog import DlibLandmarker
from fgid_builder.embed.dlib_resnet import portrait_landmarks68
from fgid_builder.registry import Backend
from fgid_builder.schema import REGION_NAMES, Captions, FaceSample, ModelInfo

VERSION = "1"

# 33rd / 67th percentiles from `python scripts/calibrate_captioner.py` (68 faces, deepface set).
TERCILES: dict[str, tuple[float, float]] = {
    "face_length": (0.830, 0.874),
    "jaw_width": (0.671, 0.703),
    "eye_size": (0.178, 0.186),
    "eye_openness": (0.284, 0.344),
    "eye_spacing": (1.434, 1.539),
    "brow_thickness": (0.035, 0.070),
    "brow_arch": (0.187, 0.219),
    "nose_width": (0.410, 0.451),
    "nose_length": (0.407, 0.428),
    "lip_fullness": (0.220, 0.275),
}
# Judged on the same photos (the script prints their percentiles): closed-mouth smiles measure
# 0.07-0.10, neutral mouths -0.06-0.03; parted lips measure > 0.1, closed ones < 0.05.
SMILE_MIN = 0.065
MOUTH_OPEN_MIN = 0.08
EYES_CLOSED_MAX = 0.12  # eye aspect ratio below which the eyes read as closed
COLOURLESS_MAX_CHROMA = 4.0  # skin chroma (a*, b*) under this: a black-and-white photo
HAIR_MIN_DELTA_E = 12.0  # hair pixels closer than this to the skin colour: no hair seen
# Hair colour names from the CIELAB median of the hair pixels (L* lightness, chroma = |a*, b*|).
HAIR_GREY_MIN_L, HAIR_GREY_MAX_CHROMA = 40.0, 4.5  # light and colourless: grey or white
HAIR_RED_MIN_A = 20.0  # red where a* dominates b* (auburn, ginger)
HAIR_DARK_MAX_L = 25.0  # under this: black (colourless) or dark brown
HAIR_BLACK_MAX_CHROMA = 6.0
HAIR_BROWN_MAX_L = 40.0
HAIR_DARK_BLOND_MIN_CHROMA = 12.5  # 40-55 L*: yellowish is dark blond, else light brown
HAIR_BLOND_MIN_L = 55.0
# ITA bands (degrees), three wide ones: light > 41 > medium > 10 > dark. The six standard bands
# (very light > 55 > light > 41 > intermediate > 28 > tan > 10 > brown > -30 > dark) are narrower
# than the spread of one person's ITA across photos (10-20 degrees on the deepface identities:
# the photo's lighting moves it), so they named one person's skin four ways.
ITA_BANDS: tuple[tuple[float, str], ...] = (
    (41.0, "light"),
    (10.0, "medium"),
)

WORDS: dict[str, tuple[str, str, str]] = {
    "face_length": ("round", "oval", "long"),
    "jaw_width": ("a tapered chin", "a softly rounded jaw", "a broad, square jaw"),
    "eye_size": ("small", "medium-sized", "large"),
    "eye_openness": ("narrow", "moderately open", "wide-open"),
    "eye_spacing": ("close-set", "evenly spaced", "wide-set"),
    "brow_thickness": ("thin", "medium", "thick"),
    "brow_arch": ("straight", "gently arched", "high-arched"),
    "nose_width": ("narrow", "medium-width", "wide"),
    "nose_length": ("short", "medium-length", "long"),
    "lip_fullness": ("thin", "medium", "full"),
}


def tercile(name: str, value: float | None) -> int | None:
    if value is None:
        return None
    lo, hi = TERCILES[name]
    return 0 if value < lo else (1 if value <= hi else 2)


def word(name: str, value: float | None) -> str | None:
    t = tercile(name, value)
    return None if t is None else WORDS[name][t]


def is_colourless(skin_lab: list[float] | None) -> bool:
    """True for grey skin pixels (black-and-white photos), where ITA says nothing."""
    return skin_lab is None or float(np.hypot(skin_lab[1], skin_lab[2])) < COLOURLESS_MAX_CHROMA


def skin_words(ita: float | None) -> str | None:
    if ita is None:
        return None
    for cut, name in ITA_BANDS:
        if ita > cut:
            return name
    return "dark"  # under the last band


def hair_words(hair_lab: list[float] | None, delta_e: float | None) -> str | None:
    """A colour name for the parser's hair pixels (CIELAB median), None where none were found or
    they look like the skin. Cuts: `HAIR_*` above, set against `tests/data/hair_labels.csv`."""
    if hair_lab is None or delta_e is None or delta_e < HAIR_MIN_DELTA_E:
        return None
    lum, a, b = hair_lab
    chroma = float(np.hypot(a, b))
    if lum >= HAIR_GREY_MIN_L and chroma < HAIR_GREY_MAX_CHROMA:
        return "grey"
    if a >= HAIR_RED_MIN_A and a >= b and lum < HAIR_BLOND_MIN_L:
        return "red"
    if lum < HAIR_DARK_MAX_L:
        return "black" if chroma < HAIR_BLACK_MAX_CHROMA else "dark brown"
    if lum < HAIR_BROWN_MAX_L:
        return "black" if chroma < HAIR_BLACK_MAX_CHROMA else "brown"
    if lum < HAIR_BLOND_MIN_L:
        return "dark blond" if chroma >= HAIR_DARK_BLOND_MIN_CHROMA else "light brown"
    return "blond"


def pose_words(face: dict[str, Any]) -> str:
    yaw, pitch, roll = (float(face.get(k) or 0.0) for k in ("yaw", "pitch", "roll"))
    parts = []
    if abs(yaw) < 10:
        parts.append("facing the camera")
    else:
        side = "right" if yaw > 0 else "left"
        amount = "slightly " if abs(yaw) < 25 else ""
        parts.append(f"turned {amount}towards the {side} of the picture")
    if pitch > 15:
        parts.append("chin raised")
    elif pitch < -15:
        parts.append("looking downwards")
    if abs(roll) > 12:
        parts.append("head tilted to one side")
    return ", ".join(parts)


def describe(measures: dict[str, Any], face: dict[str, Any]) -> Captions:
    """Captions from raw measures (`caption.regions.measure_face`) and the face record."""
    m = measures
    shape = word("face_length", m["face_length"])
    jaw = word("jaw_width", m["jaw_width"])
    skin = skin_words(m.get("ita"))
    hair = hair_words(m.get("hair_lab"), m.get("hair_delta_e"))
    if is_colourless(m.get("skin_lab")):  # a black-and-white photo: no colour to describe
        skin = hair = None

    face_sent = f"The face is {shape} with {jaw}"
    face_sent += f", and the skin tone appears {skin}." if skin else "."

    closed = m["eye_openness"] < EYES_CLOSED_MAX
    eye_bits = [word("eye_size", m["eye_size"]), word("eye_spacing", m["eye_spacing"])]
    eye_bits.append("closed" if closed else word("eye_openness", m["eye_openness"]))
    brow_thick = word("brow_thickness", m.get("brow_thickness"))
    brow = " ".join(x for x in (brow_thick, word("brow_arch", m["brow_arch"])) if x)
    if m.get("brow_thickness") is None:
        brow = f"light or faint, {word('brow_arch', m['brow_arch'])}"
    eyes_sent = f"The eyes are {', '.join(eye_bits)}, under {brow} eyebrows."

    nose_sent = (
        f"The nose is {word('nose_width', m['nose_width'])} and "
        f"{word('nose_length', m['nose_length'])}."
    )

    smiling = m["smile"] > SMILE_MIN
    open_ = m["mouth_open"] > MOUTH_OPEN_MIN
    if smiling and open_:
        expression = "smiling with the lips parted"
    elif smiling:
        expression = "smiling with the mouth closed"
    elif open_:
        expression = "open"
    else:
        expression = "closed, with a neutral expression"
    mouth_sent = (
        f"The mouth has {word('lip_fullness', m['lip_fullness'])} lips and is {expression}."
    )

    regions = {
        "face": face_sent,
        "ears": "",  # not measured: no ear detector
        "eyes": eyes_sent,
        "nose": nose_sent,
        "mouth": mouth_sent,
    }
    facial = " ".join(regions[r] for r in REGION_NAMES if regions[r])

    look = "smiling" if smiling else "with a neutral expression"
    details = [f"{skin} skin" if skin else None, f"{hair} hair" if hair else None]
    details = [d for d in details if d]
    with_ = f" with {' and '.join(details)}" if details else ""
    global_ = f"A close-up portrait photo of a person{with_}, {look}, {pose_words(face)}."
    measured = {r: r != "ears" for r in REGION_NAMES}
    return Captions(global_=global_, facial=facial, regions=regions, measured=measured)


class AttributeCaptioner(Backend):
    """Captions from measured geometry and colour; named `attribute-describer` in provenance."""

    stage = "caption"
    name = "attributes"

    def __init__(self, *, predictor_path: str | None = None, models_dir: str | None = None):
        super().__init__()
        self.predictor_path = predictor_path
        self.models_dir = models_dir
        self._m_landmarker: Any = None

    def _load(self) -> None:
        self._m_landmarker = DlibLandmarker(predictor_path=self.predictor_path)

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name="attribute-describer",
            version=VERSION,
            prompt={
                "kind": "measured attributes, no language model",
                "calibration": "scripts/calibrate_captioner.py",
            },
        )

    def measure(self, sample: FaceSample) -> dict[str, Any]:
        self.load()
        pts = portrait_landmarks68(sample, self._m_landmarker)
        return measure_face(sample.portrait, pts, sample.mask)

    def caption(self, samples: list[FaceSample]) -> list[Captions]:
        return [describe(self.measure(s), s.face) for s in samples]
