"""Tiny random-weight models in the real on-disk formats, generated at test time (never committed).

- insightface packs: ONNX files built with `onnx.helper` whose input/output signatures are the
  ones insightface's model router recognises (SCRFD: 9 outputs; 2d106: 192x192 in, 212 out;
  ArcFace: 112x112 in, 512 out; genderage: 96x96 in), random weights throughout. Nothing is
  planted: an untrained SCRFD finds no face, only what its random convolutions output.
- facexlib: the real BiSeNet / RetinaFace modules with their own random initialisation,
  `torch.save`d as the `.pth` facexlib loads.
- transformers: tiny LLaVA, Qwen2-VL and Idefics3 (SmolVLM) models saved with `save_pretrained`,
  with a byte-level BPE tokenizer trained locally and the real processor classes (no hub access).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# -- insightface ONNX ------------------------------------------------------------------------


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


def _default_init(
    rng: np.random.Generator, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A conv layer's weight and bias as PyTorch initialises nn.Conv2d: U(-k, k), k = fan_in^-0.5."""
    k = 1.0 / np.sqrt(np.prod(shape[1:]))
    return rng.uniform(-k, k, size=shape), rng.uniform(-k, k, size=shape[0])


def scrfd_onnx(
    path: Path, *, batched_outputs: bool = False, seed: int = 0, hidden: int = 16
) -> Path:
    """An SCRFD-signature ONNX with plain random weights: per stride (8, 16, 32), an average pool
    to the stride, a 3x3 conv (3 -> `hidden`) + ReLU and a 1x1 head conv giving, for 2 anchors a
    position, the score logit (sigmoid applied, as in the exports), 4 box distances and 10
    keypoint offsets (in stride units): 9 outputs, score/bbox/kps x strides. Input `input.1`
    [1, 3, H, W] with H and W dynamic, as det_10g; `batched_outputs` gives the rank-3 outputs
    (batch axis first) of some exports, with a dynamic batch.

    Weights and biases are drawn as PyTorch's default conv initialisation (seeded), not SCRFD's
    training one (1% score prior, N(0, 0.01) heads) under which every anchor would score ~0.01
    with boxes of about a pixel. Untrained, every anchor scores between ~0.3 and ~0.7 and the box
    distances are a fraction of a stride either way, so boxes are small and some inverted
    (x1 < x0): no face anywhere, only the network's output for the decoder to read.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    strides, anchors = (8, 16, 32), 2
    nodes, inits, outs = [], [], {"score": [], "bbox": [], "kps": []}
    for s in strides:
        nodes.append(
            helper.make_node(
                "AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]
            )
        )
        w, b = _default_init(rng, (hidden, 3, 3, 3))
        inits += [_init(f"w{s}", w), _init(f"b{s}", b)]
        nodes.append(
            helper.make_node("Conv", [f"pool{s}", f"w{s}", f"b{s}"], [f"feat{s}"], pads=[1] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"feat{s}"], [f"relu{s}"]))
        w, b = _default_init(rng, (anchors * 15, hidden, 1, 1))
        inits += [_init(f"hw{s}", w), _init(f"hb{s}", b)]
        nodes.append(helper.make_node("Conv", [f"relu{s}", f"hw{s}", f"hb{s}"], [f"logit{s}"]))
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
            shape = [0, -1, k] if batched_outputs else [-1, k]
            inits.append(
                helper.make_tensor(f"shape{part}{s}", TensorProto.INT64, [len(shape)], shape)
            )
            name = f"{part}_{s}"
            nodes.append(helper.make_node("Reshape", [src, f"shape{part}{s}"], [name]))
            dims = ["batch", f"n{s}", k] if batched_outputs else [f"n{s}", k]
            outs[part].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    inp = helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, ["batch" if batched_outputs else 1, 3, "H", "W"]
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
    batched_outputs: bool = False,
    landmarks: bool = True,
    nested: bool = False,
    seed: int = 0,
) -> Path:
    """A pack folder `models_dir/insightface/models/<pack>/` (nested as the antelopev2 zip).

    The detector is `scrfd_onnx(seed=seed)`: two packs with one seed hold the same network."""
    root = Path(models_dir) / "insightface" / "models" / pack
    if nested:
        root = root / pack
    names = PACK_FILES[pack]
    scrfd_onnx(root / names["det"], batched_outputs=batched_outputs, seed=seed)
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


def retinaface_pth(models_dir: Path, network: str = "mobile0.25", seed: int = 0) -> Path:
    """facexlib's RetinaFace with its own random initialisation (`torch.manual_seed(seed)`, then
    the module's constructor), saved as `detection_*_Final.pth`. Nothing is biased: what it
    detects is whatever the untrained network outputs (mobilenet0.25 scores every anchor just
    under 0.5; resnet50 saturates and scores many anchors near 1).
    Keys carry the `module.` prefix of the released files (the loader strips it).
    """
    import torch
    from facexlib.detection.retinaface import RetinaFace

    from fgid_builder.detect.retinaface import RETINAFACE_FILES

    torch.manual_seed(seed)
    net = RetinaFace(network_name=network, device="cpu")
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = Path(models_dir) / "facexlib" / "weights" / RETINAFACE_FILES[network]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return path


# -- transformers vision-language models -----------------------------------------------------

_CORPUS = [
    "Please describe the people in the image, including their gender, age, clothing, facial "
    "expressions, and any other distinguishing features.",
    "Describe this person's facial features for me, including face, ears, eyes, nose, and mouth.",
    "The person has an oval face with smooth skin. Her ears are small. His eyes are brown and "
    "wide-set. The nose is straight. The mouth is wide with thin lips and a smile.",
    "A young woman with short hair wearing a black shirt, smiling. An old man with a beard.",
    "USER: ASSISTANT: user assistant system",
]
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: "
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bpe_tokenizer(special: list[str], *, vocab_size: int = 400, **named: str):
    """A byte-level BPE tokenizer trained here on a few sentences (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def tiny_llava(
    path: Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    layers: int = 2,
    hidden: int = 64,
) -> Path:
    """A LLaVA-1.5-shaped model (CLIP vision tower + projector + Llama) with random weights."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch) ** 2,
    )
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def tiny_qwen2vl(path: Path, *, seed: int = 0) -> Path:
    """A Qwen2-VL-shaped model (ViT with 2x2 merge, M-RoPE text model) with random weights."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = bpe_tokenizer(special, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": special[1:]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    hidden = 64
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_chans": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_idefics3(path: Path, *, seed: int = 0, image_size: int = 32, patch: int = 8) -> Path:
    """A SmolVLM/Idefics3-shaped model (SigLIP-style vision tower, pixel-shuffle connector with
    scale factor 2, Llama text model) with random weights; images not split into tiles."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    special = ["<unk>", "<|im_start|>", "<end_of_utterance>", "<pad>", "<image>",
               "<fake_token_around_image>", "<global-img>"]  # fmt: skip
    tok = bpe_tokenizer(special, unk_token="<unk>", bos_token="<|im_start|>",
                        eos_token="<end_of_utterance>", pad_token="<pad>")  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": special[4:]})
    scale = 2
    config = Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 1024,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        scale_factor=scale,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(image_size // patch) ** 2 // scale**2,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
