"""The FGID caption protocol: the two questions, and the facial answer split into regions.

FGID's captions came from LLaVA-1.5-7B, temperature 0, `num_beams=1`, `max_new_tokens=512`,
two questions per image (ConsistentID `data/FGID_caption.py`). The official strings are
Python literals continued with a backslash, so they carry a run of spaces mid-sentence; the
whitespace-normalised text is used here (recorded with every sample).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fgid_builder.schema import REGION_NAMES

FGID_GLOBAL_QUESTION = (
    "Please describe the people in the image, including their gender, age, clothing, "
    "facial expressions, and any other distinguishing features."
)
FGID_FACIAL_QUESTION = (
    "Describe this person's facial features for me, including face, ears, eyes, nose, and mouth."
)
# LLaVA-1.5 conversation (llava_v1) as the llava-hf checkpoints' chat template renders it; used
# only when the processor ships no chat template.
LLAVA15_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


@dataclass(frozen=True)
class CaptionProtocol:
    """Questions and generation settings: everything that decides the caption text."""

    global_question: str = FGID_GLOBAL_QUESTION
    facial_question: str = FGID_FACIAL_QUESTION
    max_new_tokens: int = 512
    do_sample: bool = False  # greedy, as temperature 0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    prompt_template: str | None = None  # None: the processor's chat template
    extra_generate_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.global_question.strip() or not self.facial_question.strip():
            raise ValueError("caption questions must not be empty")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be >= 1")
        if self.prompt_template is not None and "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {question}")

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
        }
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        kw.update(self.extra_generate_kwargs)
        return kw

    def record(self) -> dict[str, Any]:
        """What `model_info().prompt` stores with each sample."""
        out = asdict(self)
        out["protocol"] = "fgid-2q" if self.is_fgid() else "custom"
        return out

    def is_fgid(self) -> bool:
        return (
            self.global_question == FGID_GLOBAL_QUESTION
            and self.facial_question == FGID_FACIAL_QUESTION
            and not self.do_sample
            and self.num_beams == 1
        )


# Words that place a sentence in a region. Brows and lashes go with the eyes, cheeks/chin/jaw/
# skin/forehead with the face; "face" alone is weak (it appears in "her face has ... nose").
_REGION_WORDS: dict[str, tuple[str, ...]] = {
    "ears": ("ear", "ears", "earlobe", "earlobes", "earring", "earrings"),
    "eyes": (
        "eye",
        "eyes",
        "eyebrow",
        "eyebrows",
        "brow",
        "brows",
        "eyelash",
        "eyelashes",
        "eyelid",
        "eyelids",
        "gaze",
        "iris",
        "irises",
        "pupils",
    ),
    "nose": ("nose", "nostril", "nostrils", "nasal"),
    "mouth": ("mouth", "lip", "lips", "smile", "smiling", "teeth", "grin"),
    "face": (
        "cheek",
        "cheeks",
        "cheekbone",
        "cheekbones",
        "chin",
        "jaw",
        "jawline",
        "forehead",
        "skin",
        "complexion",
        "face shape",
        "facial structure",
        "beard",
        "mustache",
        "moustache",
        "wrinkles",
        "freckles",
    ),
}
_FACE_WEAK = ("face", "facial")
_HEADING = re.compile(
    r"^\s*(?:[-*\u2022]|\d+[.)])?\s*\**\s*(face|ears?|eyes?|nose|mouth|lips)\s*\**\s*[:\-\u2013]\s*",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _words(text: str, vocab: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(re.search(rf"\b{re.escape(w)}\b", low) for w in vocab)


def split_sentences(text: str) -> list[str]:
    parts: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            parts.extend(p.strip() for p in _SENTENCE_END.split(line) if p.strip())
    return parts


def _canonical(word: str) -> str:
    word = word.lower()
    return {"ear": "ears", "eye": "eyes", "lips": "mouth"}.get(word, word)


def split_facial_answer(text: str) -> dict[str, str]:
    """The facial answer as one string per region (`face, ears, eyes, nose, mouth`).

    Lists with headings ("Eyes: ...", "2. **Nose**: ...") are split by heading; prose is split
    into sentences, each sentence going to every region it names. The face gets the sentences
    naming face-only words (cheeks, skin, jaw...), else those saying "face" without naming
    another region. A region the answer never mentions gets "".
    """
    buckets: dict[str, list[str]] = {r: [] for r in REGION_NAMES}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    headed = [(_HEADING.match(ln), ln) for ln in lines]
    if sum(1 for m, _ in headed if m) >= 2:
        current: str | None = None
        for m, ln in headed:
            if m:
                current = _canonical(m.group(1))
                body = ln[m.end() :].strip()
                if body:
                    buckets[current].append(body)
            elif current is not None:
                buckets[current].append(ln.strip())
        return {r: " ".join(buckets[r]).strip() for r in REGION_NAMES}

    weak_face: list[str] = []
    for sentence in split_sentences(text):
        named = [r for r in REGION_NAMES if _words(sentence, _REGION_WORDS[r])]
        for r in named:
            buckets[r].append(sentence)
        if not named and _words(sentence, _FACE_WEAK):
            weak_face.append(sentence)
    if not buckets["face"]:
        buckets["face"] = weak_face
    return {r: " ".join(buckets[r]).strip() for r in REGION_NAMES}


def clean_answer(text: str) -> str:
    """One generated answer, trimmed of whitespace runs and a trailing unfinished sentence mark."""
    return re.sub(r"[ \t]+", " ", text).strip()
