"""Checks every test that builds samples runs on each sample's JSON (the published schema and
what the captions may say)."""

from __future__ import annotations

import functools
import re
from typing import Any

# Words of text about the captioner rather than the picture ("this describer does not locate
# ears", "not measured", "as an AI model"...): no caption may hold them.
_ABOUT_THE_CAPTIONER = re.compile(
    r"\b(describer|captioner|caption|not described|not measured|measured|not located|locate|"
    r"detector|model|language model|as an ai|this (?:system|tool|program))\b",
    re.IGNORECASE,
)


@functools.cache
def _validator() -> Any:
    import jsonschema

    from fgid_builder.schema import sample_json_schema

    schema = sample_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def caption_problems(captions: dict[str, Any]) -> list[str]:
    """What is wrong with a sample's captions: text about the captioner, or text for a region
    flagged as not measured."""
    out = []
    texts = {"global": captions["global"], "facial": captions["facial"], **captions["regions"]}
    for where, text in texts.items():
        m = _ABOUT_THE_CAPTIONER.search(text)
        if m:
            out.append(f"captions.{where} speaks of the captioner ({m.group(0)!r}): {text!r}")
    for region, seen in captions["measured"].items():
        if not seen and captions["regions"][region]:
            out.append(
                f"captions.regions.{region} is not measured but says {captions['regions'][region]!r}"
            )
    return out


def check_sample_json(meta: dict[str, Any]) -> None:
    """The sample JSON follows `fgid_builder/sample.schema.json` and its captions describe."""
    errors = sorted(_validator().iter_errors(meta), key=lambda e: list(e.absolute_path))
    assert not errors, "; ".join(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]
    )
    problems = caption_problems(meta["captions"])
    assert not problems, problems
