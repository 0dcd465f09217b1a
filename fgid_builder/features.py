"""The sample as Hugging Face `datasets` sees it: `datasets.Features` from the JSON Schema.

`datasets.load_dataset("webdataset", data_files=..., features=sample_features())` reads shards
without inferring types from the first samples (`pip install 'fgid[datasets]'`). The one field
without fixed keys, `source.extra` (a manifest's pass-through columns), is an empty struct here:
shards whose manifests had columns need their own Features for it.
"""

from __future__ import annotations

from typing import Any

import datasets

from fgid_builder.schema import sample_json_schema

_VALUE = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}


def _feature(node: dict[str, Any]) -> Any:
    kind = node["type"]
    if kind == "object":  # a map without fixed keys (source.extra) becomes an empty struct
        return {k: _feature(v) for k, v in node.get("properties", {}).items()}
    if kind == "array":
        return datasets.Sequence(_feature(node["items"]))
    return datasets.Value(_VALUE[kind])


def sample_features() -> datasets.Features:
    """Features of a shard sample (`__key__`, `__url__`, jpg, mask.png, id.npy, json), the
    `json` member's from `fgid_builder/sample.schema.json`."""
    return datasets.Features(
        {
            "__key__": datasets.Value("string"),
            "__url__": datasets.Value("string"),
            "jpg": datasets.Image(),
            "mask.png": datasets.Image(),
            "id.npy": datasets.Sequence(datasets.Value("float32")),
            "json": _feature(sample_json_schema()),
        }
    )
