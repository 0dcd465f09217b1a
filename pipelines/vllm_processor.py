"""`ray.data.llm` wiring of the vLLM captioner (Ray lives in pipelines/, not in the library)."""

from __future__ import annotations

import base64
from typing import Any

from fgid_builder.caption.mllm import resolve_model_folder
from fgid_builder.caption.prompts import clean_answer
from fgid_builder.caption.vllm_backend import VLLMCaptioner, chat_messages, require_vllm


def ray_processor(captioner: VLLMCaptioner, *, image_column: str = "portrait_jpg") -> Any:
    """A `ray.data.llm` processor for a Dataset of (portrait, question) rows.

    Input rows: `image_column` (JPEG bytes) and `question` ("global" | "facial"), e.g. from
    `ds.flat_map(question_rows)`; output rows: the same columns plus `answer`. Group the
    two answers of a key back with `captions_from_answers`.
    """
    require_vllm()
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    folder = resolve_model_folder(captioner.model, captioner.models_dir, captioner.model_path)
    questions = {
        "global": captioner.protocol.global_question,
        "facial": captioner.protocol.facial_question,
    }
    sampling = captioner._sampling()

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        url = "data:image/jpeg;base64," + base64.b64encode(row[image_column]).decode()
        return dict(
            row,
            messages=chat_messages(url, questions[row["question"]]),
            sampling_params=sampling,
        )

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        text = clean_answer(row["generated_text"])
        keep = {k: v for k, v in row.items() if k not in {"messages", "sampling_params"}}
        keep["answer"] = text
        return keep

    config = vLLMEngineProcessorConfig(
        model_source=str(folder),
        engine_kwargs=captioner._engine_kwargs(),
        batch_size=captioner.batch_size,
        concurrency=captioner.concurrency,
        prepare_multimodal_stage=True,
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
    )
    return build_processor(config, preprocess=preprocess, postprocess=postprocess)
