"""Captions at scale with vLLM: the same FGID protocol as `mllm`, for GPU clusters.

Two ways in, both lazy about `vllm` (an optional extra: `pip install 'fgid[vllm]'`):
- `caption(samples)`: a `vllm.LLM` in this process (one GPU actor of the Ray pipeline);
- `pipelines.vllm_processor.ray_processor(captioner)`: a `ray.data.llm` processor
  (`vLLMEngineProcessorConfig` + `build_processor`) that the pipeline applies to a Dataset of
  portraits, letting Ray Data run the engine replicas, tokenisation and image preparation as
  separate stages (in `pipelines/`: this library imports no Ray).
Rows carry the portrait as a JPEG data URL in OpenAI chat format, which vLLM's chat templating
understands for every multimodal family it serves.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from typing import Any

import numpy as np

from fgid_builder.caption.mllm import resolve_model_folder
from fgid_builder.caption.prompts import (
    FGID_FACIAL_QUESTION,
    FGID_GLOBAL_QUESTION,
    CaptionProtocol,
    clean_answer,
    split_facial_answer,
)
from fgid_builder.models import dir_sha256
from fgid_builder.registry import Backend
from fgid_builder.schema import Captions, FaceSample, ModelInfo

VLLM_EXTRA = "pip install 'fgid[vllm]'  (vllm needs a CUDA GPU)"


class MissingExtraError(ImportError):
    """An optional dependency of a backend is not installed; the message names the extra."""


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise MissingExtraError(
            f"the 'vllm' caption backend needs the vllm package, which is not installed: "
            f"{VLLM_EXTRA}; or use --captioner mllm (transformers)"
        )


def portrait_data_url(image: np.ndarray, quality: int = 95) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(image_url: str, question: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": question},
            ],
        }
    ]


def question_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per FGID question for a portrait row (for `Dataset.flat_map`)."""
    return [dict(row, question="global"), dict(row, question="facial")]


def captions_from_answers(global_answer: str, facial_answer: str) -> Captions:
    return Captions(
        global_=global_answer, facial=facial_answer, regions=split_facial_answer(facial_answer)
    )


class VLLMCaptioner(Backend):
    """FGID captions with vLLM.

    Options: `model`, `models_dir`, `model_path` (as `mllm`), `tensor_parallel_size`,
    `batch_size` (rows per engine call in Ray Data), `concurrency` (engine replicas),
    `max_model_len`, `gpu_memory_utilization`, `engine_kwargs`, and the protocol
    (`global_question`, `facial_question`, `max_new_tokens`, `num_beams` is always 1: vLLM
    samples with temperature 0 for greedy).
    """

    stage = "caption"
    name = "vllm"

    def __init__(
        self,
        *,
        model: str = "llava-1.5-7b-hf",
        models_dir: str | None = None,
        model_path: str | None = None,
        tensor_parallel_size: int = 1,
        batch_size: int = 64,
        concurrency: int = 1,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.9,
        engine_kwargs: dict[str, Any] | None = None,
        global_question: str = FGID_GLOBAL_QUESTION,
        facial_question: str = FGID_FACIAL_QUESTION,
        max_new_tokens: int = 512,
    ) -> None:
        super().__init__()
        if tensor_parallel_size < 1 or batch_size < 1 or concurrency < 1:
            raise ValueError("tensor_parallel_size, batch_size and concurrency must be >= 1")
        self.model = model
        self.models_dir = None if models_dir is None else str(models_dir)
        self.model_path = model_path
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.max_model_len = int(max_model_len)
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self.engine_kwargs = dict(engine_kwargs or {})
        self.protocol = CaptionProtocol(
            global_question=global_question,
            facial_question=facial_question,
            max_new_tokens=max_new_tokens,
        )

    def _engine_kwargs(self) -> dict[str, Any]:
        kw = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "limit_mm_per_prompt": {"image": 1},
        }
        kw.update(self.engine_kwargs)
        return kw

    def _sampling(self) -> dict[str, Any]:
        return {"temperature": 0.0, "max_tokens": self.protocol.max_new_tokens}

    def _load(self) -> None:
        require_vllm()
        folder = resolve_model_folder(self.model, self.models_dir, self.model_path)
        from vllm import LLM, SamplingParams

        self._m_llm = LLM(model=str(folder), **self._engine_kwargs())
        self._m_sampling = SamplingParams(**self._sampling())

    def model_info(self) -> ModelInfo:
        folder = resolve_model_folder(self.model, self.models_dir, self.model_path)
        prompt = self.protocol.record()
        prompt.update({"engine": "vllm", "template": "chat_template", "sampling": self._sampling()})
        version = "vllm"
        if importlib.util.find_spec("vllm") is not None:
            import vllm

            version = f"vllm {vllm.__version__}"
        return ModelInfo(
            name=f"vllm/{folder.name}",
            version=version,
            weights_sha256=dir_sha256(folder),
            prompt=prompt,
        )

    def caption(self, samples: list[FaceSample]) -> list[Captions]:
        self.load()
        conversations = []
        for s in samples:
            url = portrait_data_url(s.portrait)
            conversations.append(chat_messages(url, self.protocol.global_question))
            conversations.append(chat_messages(url, self.protocol.facial_question))
        outputs = self._m_llm.chat(conversations, self._m_sampling, use_tqdm=False)
        texts = [clean_answer(o.outputs[0].text) for o in outputs]
        return [captions_from_answers(texts[2 * i], texts[2 * i + 1]) for i in range(len(samples))]
