"""Captions from any Hugging Face vision-language model in a local folder (transformers).

The model is loaded with `AutoProcessor` + `AutoModelForImageTextToText` from a
`save_pretrained` folder (`DIR/mllm/<model>/` or an explicit `model_path`), never from the hub.
LLaVA-1.5 with the FGID questions is the reference; Qwen2-VL, Idefics3/SmolVLM and other
image-text-to-text families load the same way. Both questions of every face in a batch are
generated together (left padding, greedy by default) and the facial answer is split into the
five region sentences.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from fgid_builder.caption.prompts import (
    FGID_FACIAL_QUESTION,
    FGID_GLOBAL_QUESTION,
    LLAVA15_TEMPLATE,
    CaptionProtocol,
    clean_answer,
    split_facial_answer,
)
from fgid_builder.models import MODELS_DIR_ENV, dir_sha256, resolve_models_dir
from fgid_builder.registry import Backend
from fgid_builder.schema import Captions, FaceSample, ModelFileError, ModelInfo

log = logging.getLogger(__name__)

MLLM_SUBDIR = "mllm"
# Families whose processors take one list of images per prompt.
_NESTED_IMAGES = {"idefics", "idefics2", "idefics3", "smolvlm", "mllama"}
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def resolve_model_folder(
    model: str, models_dir: str | os.PathLike | None, model_path: str | None
) -> Path:
    """The save_pretrained folder: `model_path`, else `DIR/mllm/<model>/`; must hold config.json."""
    if model_path:
        folder = Path(model_path).expanduser()
        where = "the --caption-model-path given"
    else:
        base = resolve_models_dir(models_dir)
        if base is None:
            raise ModelFileError(
                f"MLLM captioner model {model!r} not found: no models directory given (expected "
                f"a save_pretrained folder at DIR/{MLLM_SUBDIR}/{model}/; pass --models-dir DIR "
                f"or set {MODELS_DIR_ENV})"
            )
        folder = base / MLLM_SUBDIR / model
        where = f"expected a save_pretrained folder at {folder}"
    if not (folder / "config.json").is_file():
        raise ModelFileError(f"MLLM captioner config not found: {folder / 'config.json'} ({where})")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelFileError(
            f"MLLM captioner weights not found: no *.safetensors in {folder} ({where})"
        )
    return folder


class MLLMCaptioner(Backend):
    """Global + facial captions from a vision-language model, FGID protocol by default.

    Options: `model` (folder name under DIR/mllm/), `models_dir`, `model_path` (explicit folder),
    `batch_size` (faces per generate call; each face asks two questions), `device`
    (cpu | cuda[:N]), `dtype` (auto | float32 | bfloat16 | float16), the protocol
    (`global_question`, `facial_question`, `max_new_tokens`, `do_sample`, `num_beams`,
    `repetition_penalty`, `prompt_template` with `{question}`, `generate_kwargs`),
    `num_threads` (torch CPU threads).
    """

    stage = "caption"
    name = "mllm"

    def __init__(
        self,
        *,
        model: str = "llava-1.5-7b-hf",
        models_dir: str | None = None,
        model_path: str | None = None,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        global_question: str = FGID_GLOBAL_QUESTION,
        facial_question: str = FGID_FACIAL_QUESTION,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        prompt_template: str | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}")
        self.model = model
        self.models_dir = None if models_dir is None else str(models_dir)
        self.model_path = model_path
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self.protocol = CaptionProtocol(
            global_question=global_question,
            facial_question=facial_question,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
            prompt_template=prompt_template,
            extra_generate_kwargs=dict(generate_kwargs or {}),
        )
        self.num_threads = num_threads

    # -- loading ------------------------------------------------------------------------------
    def _folder(self) -> Path:
        return resolve_model_folder(self.model, self.models_dir, self.model_path)

    def _device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device!r} but torch sees no CUDA device")
        return self.device

    def _torch_dtype(self) -> Any:
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self._device().startswith("cuda") else torch.float32
        return getattr(torch, _DTYPES[self.dtype])

    def _processor(self) -> Any:
        """The processor alone (cheap): enough to render and record prompts without the model."""
        if getattr(self, "_m_processor", None) is None:
            import json

            import transformers
            from transformers import AutoProcessor

            folder = self._folder()
            transformers.logging.set_verbosity_error()
            try:
                processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
                config = json.loads((folder / "config.json").read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise ModelFileError(
                    f"MLLM captioner processor cannot be loaded from {folder} ({msg})"
                ) from None
            tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.padding_side = "left"
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
            self._m_model_type = str(config.get("model_type", ""))
            self._m_processor = processor
        return self._m_processor

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        folder = self._folder()
        self._processor()
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        from safetensors import SafetensorError

        try:
            model = AutoModelForImageTextToText.from_pretrained(
                str(folder), local_files_only=True, dtype=self._torch_dtype()
            )
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelFileError(
                f"MLLM captioner weights cannot be loaded: {folder} ({msg})"
            ) from None
        self._m_device = self._device()
        self._m_model = model.to(self._m_device).eval()

    # -- prompts ------------------------------------------------------------------------------
    def _template_source(self) -> str:
        if self.protocol.prompt_template is not None:
            return self.protocol.prompt_template
        if getattr(self._processor(), "chat_template", None):
            return "chat_template"
        if self._m_model_type == "llava":
            return LLAVA15_TEMPLATE
        raise ValueError(
            f"{self._folder()} has no chat template; pass prompt_template='... {{question}} ...'"
        )

    def render_prompt(self, question: str) -> str:
        """The full text prompt (with the image placeholder) sent for one question."""
        processor = self._processor()
        source = self._template_source()
        if source != "chat_template":
            return source.format(question=question)
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )

    def model_info(self) -> ModelInfo:
        import transformers

        folder = self._folder()
        self._processor()
        prompt = self.protocol.record()
        prompt["template"] = self._template_source()
        prompt["rendered"] = {
            "global": self.render_prompt(self.protocol.global_question),
            "facial": self.render_prompt(self.protocol.facial_question),
        }
        return ModelInfo(
            name=f"mllm/{folder.name}",
            version=f"{self._m_model_type}; transformers {transformers.__version__}",
            weights_sha256=dir_sha256(folder),
            prompt=prompt,
        )

    # -- generation ---------------------------------------------------------------------------
    def generate(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        """One answer per (image, question) pair, batched by `batch_size` pairs."""
        import torch
        from PIL import Image

        self.load()
        answers: list[str] = []
        prompts = {q: self.render_prompt(q) for q in set(questions)}
        nested = self._m_model_type in _NESTED_IMAGES
        gen_kwargs = self.protocol.generate_kwargs()
        tok = getattr(self._m_processor, "tokenizer", None)
        if tok is not None and tok.pad_token_id is not None:
            gen_kwargs.setdefault("pad_token_id", tok.pad_token_id)
        dtype = self._m_model.dtype
        for start in range(0, len(images), self.batch_size):
            imgs = [Image.fromarray(np.asarray(i)) for i in images[start : start + self.batch_size]]
            texts = [prompts[q] for q in questions[start : start + self.batch_size]]
            inputs = self._m_processor(
                text=texts,
                images=[[i] for i in imgs] if nested else imgs,
                return_tensors="pt",
                padding=True,
            )
            inputs = {
                k: (
                    v.to(self._m_device, dtype=dtype)
                    if torch.is_floating_point(v)
                    else v.to(self._m_device)
                )
                if hasattr(v, "to")
                else v
                for k, v in inputs.items()
            }
            with torch.inference_mode():
                out = self._m_model.generate(**inputs, **gen_kwargs)
            new_tokens = out[:, inputs["input_ids"].shape[1] :]
            decoded = self._m_processor.batch_decode(new_tokens, skip_special_tokens=True)
            answers.extend(clean_answer(t) for t in decoded)
        return answers

    def caption(self, samples: list[FaceSample]) -> list[Captions]:
        if not samples:
            return []
        images, questions = [], []
        for s in samples:  # both questions of a face side by side: one batch serves both
            images += [s.portrait, s.portrait]
            questions += [self.protocol.global_question, self.protocol.facial_question]
        answers = self.generate(images, questions)
        out = []
        for i in range(len(samples)):
            global_, facial = answers[2 * i], answers[2 * i + 1]
            out.append(
                Captions(global_=global_, facial=facial, regions=split_facial_answer(facial))
            )
        return out
