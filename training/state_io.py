"""Optimizer, scheduler and scaler state as safetensors + JSON instead of pickle.

`torch.save` of a state dict is a pickle. A checkpoint here is instead two files per object: the
tensors in `NAME.safetensors` under flat keys, and the structure around them (dicts with int or
str keys, lists, tuples, numbers, strings, None) in `NAME.json`, where each tensor is a
`{"__tensor__": key}` reference. Anything else is refused when saving rather than written in a
form that cannot be read back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not {_TENSOR, _TUPLE, _ITEMS} & set(obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        if all(isinstance(k, (int, str)) and not isinstance(k, bool) for k in obj):
            return {_ITEMS: [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} at {path or 'the top'} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        if _ITEMS in obj:
            return {k: _decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def save_state(state: Any, folder: str | Path, name: str) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, "")
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(structure, indent=1, sort_keys=True))


def load_state(folder: str | Path, name: str) -> Any:
    from safetensors.torch import load_file

    folder = Path(folder)
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return _decode(json.loads((folder / f"{name}.json").read_text()), tensors)


def has_state(folder: str | Path, name: str) -> bool:
    folder = Path(folder)
    return (folder / f"{name}.json").is_file() and (folder / f"{name}.safetensors").is_file()
