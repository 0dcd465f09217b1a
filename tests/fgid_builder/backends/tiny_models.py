"""Tiny random-weight models in the real on-disk formats, generated at test time (never committed).

- insightface packs: ONNX files built with `onnx.helper` whose input/output signatures are the
  ones insightface's model router recognises (SCRFD: 9 outputs; 2d106: 192x192 in, 212 out;
  ArcFace: 112x112 in, 512 out; genderage: 96x96 in). The SCRFD graph is random convolutions
  plus bias maps that put one confident, face-shaped detection at chosen canvas positions, so a
  pipeline downstream has a face to align.
- facexlib: the real BiSeNet / RetinaFace modules with random weights, `torch.save`d as the
  `.pth` facexlib loads.
- transformers: tiny LLaVA and Qwen2-VL models saved with `save_pretrained`, with a byte-level
  BPE tokenizer trained locally and the real processor classes (no hub access).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# -- insightface ONNX ------------------------------------------------------------------------

# 5-point face template (canvas pixels, relative to the face centre) for a 192 px face.
_KPS_TEMPLATE = np.array([[-36, -24], [36, -24], [0, 12], [-30, 48], [30, 48]], dtype=np.float32)


def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def _save(model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(graph):
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def scrfd_onnx(
    path: Path,
    *,
    det_size: int = 640,
    faces: Sequence[tuple[float, float]] = ((0.4, 0.4),),
    face_px: int = 192,
    batched_outputs: bool = False,
    seed: int = 0,
) -> Path:
    """An SCRFD-signature ONNX (3 strides x score/bbox/kps = 9 outputs, 2 anchors).

    `faces` are canvas positions as fractions of `det_size`; each becomes one detection of
    `face_px` pixels (in canvas pixels) with score ~0.99. Real SCRFD exports have rank-2
    outputs (no batch axis, as buffalo_l's det_10g); `batched_outputs` adds the batch axis.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    strides, anchors = (8, 16, 32), 2
    nodes, inits, outs = [], [], {"score": [], "bbox": [], "kps": []}
    for s in strides:
        fh = det_size // s
        nodes.append(
            helper.make_node(
                "AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]
            )
        )
        w = rng.normal(0, 0.01, size=(anchors * 15, 3, 1, 1))
        inits.append(_init(f"w{s}", w))
        nodes.append(helper.make_node("Conv", [f"pool{s}", f"w{s}"], [f"feat{s}"]))
        bias = np.zeros((1, anchors * 15, fh, fh), np.float32)
        bias[:, 0:anchors] = -9.0  # score logits
        bias[:, anchors : anchors * 5] = 1.0  # box distances (stride units)
        if s == 32:
            for fx, fy in faces:
                cx, cy = round(fx * det_size / s), round(fy * det_size / s)
                bias[0, 0, cy, cx] = 9.0  # anchor 0 only
                bias[0, anchors : anchors + 4, cy, cx] = face_px / 2 / s
                kps = (_KPS_TEMPLATE * face_px / 192.0 / s).reshape(-1)
                bias[0, anchors * 5 : anchors * 5 + 10, cy, cx] = kps
        inits.append(_init(f"b{s}", bias))
        nodes.append(helper.make_node("Add", [f"feat{s}", f"b{s}"], [f"logit{s}"]))
        nodes.append(helper.make_node("Transpose", [f"logit{s}"], [f"nhwc{s}"], perm=[0, 2, 3, 1]))
        for part, lo, hi, k in (
            ("score", 0, anchors, 1),
            ("bbox", anchors, anchors * 5, 4),
            ("kps", anchors * 5, anchors * 15, 10),
        ):
            inits.append(helper.make_tensor(f"st{part}{s}", TensorProto.INT64, [1], [lo]))
            inits.append(helper.make_tensor(f"en{part}{s}", TensorProto.INT64, [1], [hi]))
            inits.append(helper.make_tensor(f"ax{part}{s}", TensorProto.INT64, [1], [3]))
            nodes.append(
                helper.make_node(
                    "Slice",
                    [f"nhwc{s}", f"st{part}{s}", f"en{part}{s}", f"ax{part}{s}"],
                    [f"{part}sl{s}"],
                )
            )
            src = f"{part}sl{s}"
            if part == "score":
                nodes.append(helper.make_node("Sigmoid", [src], [f"{part}sig{s}"]))
                src = f"{part}sig{s}"
            shape = [1, -1, k] if batched_outputs else [-1, k]
            if batched_outputs:
                shape = [0, -1, k]
            inits.append(
                helper.make_tensor(f"shape{part}{s}", TensorProto.INT64, [len(shape)], shape)
            )
            name = f"{part}_{s}"
            nodes.append(helper.make_node("Reshape", [src, f"shape{part}{s}"], [name]))
            n = (det_size // s) ** 2 * anchors
            dims = ["batch", n, k] if batched_outputs else [n, k]
            outs[part].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    inp = helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, ["batch" if batched_outputs else 1, 3, det_size, det_size]
    )
    graph = helper.make_graph(
        nodes, "tiny_scrfd", [inp], outs["score"] + outs["bbox"] + outs["kps"], inits
    )
    return _save(_model(graph), path)


def _head_onnx(
    path: Path,
    *,
    name: str,
    size: int,
    out_dim: int,
    seed: int,
    tanh: bool = False,
    template: np.ndarray | None = None,
) -> Path:
    """conv -> relu -> global pool -> gemm: a tiny network with the given in/out signature."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [
        _init("conv_w", rng.normal(0, 0.2, size=(8, 3, 3, 3))),
        _init("fc_w", rng.normal(0, 0.5, size=(8, out_dim))),
        _init("fc_b", np.zeros(out_dim) if template is None else template),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "conv_w"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"]),
        helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["fc" if tanh else "fc1"]),
    ]
    if tanh:
        nodes.append(helper.make_node("Tanh", ["fc"], ["fc1"]))
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, size, size])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", out_dim])
    return _save(_model(helper.make_graph(nodes, name, [inp], [out], inits)), path)


def landmark106_onnx(path: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    template = rng.uniform(-0.4, 0.4, size=212).astype(np.float32)
    return _head_onnx(
        path, name="tiny_2d106", size=192, out_dim=212, seed=seed, tanh=True, template=template * 2
    )


def arcface_onnx(path: Path, seed: int = 2, dim: int = 512) -> Path:
    return _head_onnx(path, name="tiny_arcface", size=112, out_dim=dim, seed=seed)


def genderage_onnx(path: Path, seed: int = 3) -> Path:
    return _head_onnx(path, name="tiny_genderage", size=96, out_dim=3, seed=seed)


PACK_FILES = {
    "buffalo_l": {"det": "det_10g.onnx", "lmk": "2d106det.onnx", "rec": "w600k_r50.onnx"},
    "antelopev2": {"det": "scrfd_10g_bnkps.onnx", "lmk": "2d106det.onnx", "rec": "glintr100.onnx"},
}


def insightface_pack(
    models_dir: Path,
    pack: str = "buffalo_l",
    *,
    det_size: int = 640,
    faces: Sequence[tuple[float, float]] = ((0.4, 0.4),),
    face_px: int = 192,
    batched_outputs: bool = False,
    landmarks: bool = True,
    nested: bool = False,
) -> Path:
    """A pack folder `models_dir/insightface/models/<pack>/` (nested as the antelopev2 zip)."""
    root = Path(models_dir) / "insightface" / "models" / pack
    if nested:
        root = root / pack
    names = PACK_FILES[pack]
    scrfd_onnx(
        root / names["det"],
        det_size=det_size,
        faces=faces,
        face_px=face_px,
        batched_outputs=batched_outputs,
    )
    if landmarks:
        landmark106_onnx(root / names["lmk"])
    arcface_onnx(root / names["rec"])
    genderage_onnx(root / "genderage.onnx")
    return root


# -- facexlib .pth -----------------------------------------------------------------------------


def bisenet_pth(models_dir: Path, seed: int = 0) -> Path:
    """facexlib's BiSeNet(19) with random weights, saved where the backend looks for it."""
    import torch
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(seed)
    net = BiSeNet(num_class=19)
    path = Path(models_dir) / "facexlib" / "weights" / "parsing_bisenet.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def retinaface_pth(
    models_dir: Path, network: str = "mobile0.25", seed: int = 0, faces: bool = True
) -> Path:
    """facexlib's RetinaFace with random weights as `detection_*_Final.pth`.

    With `faces`, the class head is biased so that the largest stride-32 anchors fire and the
    box head is biased to very large boxes: NMS then keeps one detection per image.
    Keys carry the `module.` prefix of the released files (the loader strips it).
    """
    import torch
    from facexlib.detection.retinaface import RetinaFace

    from fgid_builder.detect.retinaface import RETINAFACE_FILES

    torch.manual_seed(seed)
    net = RetinaFace(network_name=network, device="cpu")
    state = net.state_dict()
    if faces:
        for i in range(3):
            state[f"ClassHead.{i}.conv1x1.weight"].mul_(0.01)
            bias = state[f"ClassHead.{i}.conv1x1.bias"]
            bias.copy_(torch.tensor([4.0, -4.0, 4.0, -4.0]))
        state["ClassHead.2.conv1x1.bias"].copy_(torch.tensor([4.0, -4.0, -4.0, 4.0]))
        state["BboxHead.2.conv1x1.weight"].mul_(0.01)
        state["BboxHead.2.conv1x1.bias"].copy_(torch.tensor([0.0, 0, 12, 12, 0, 0, 12, 12]))
        state["LandmarkHead.2.conv1x1.weight"].mul_(0.01)
        kps = torch.from_numpy(_KPS_TEMPLATE.reshape(-1) / 19.2)
        state["LandmarkHead.2.conv1x1.bias"].copy_(torch.cat([kps, kps]))
    state = {f"module.{k}": v for k, v in state.items()}
    path = Path(models_dir) / "facexlib" / "weights" / RETINAFACE_FILES[network]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return path
