"""mllm captioner on tiny LLaVA and Qwen2-VL folders; FGID prompts and the region splitter."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from fgid_builder.caption.mllm import MLLMCaptioner
from fgid_builder.caption.prompts import (
    FGID_FACIAL_QUESTION,
    FGID_GLOBAL_QUESTION,
    split_facial_answer,
)
from fgid_builder.caption.vllm_backend import MissingExtraError, VLLMCaptioner
from fgid_builder.schema import REGION_NAMES, Captions, ModelFileError
from tests.fgid_builder.backends.conftest import one_line


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-qwen2vl"])
def test_captions_batched_equal_one_by_one(mllm_dir: Path, portrait_samples, model: str) -> None:
    samples = portrait_samples[:2]
    batched = MLLMCaptioner(model=model, models_dir=str(mllm_dir), max_new_tokens=8, batch_size=4)
    caps = batched.caption(samples)
    assert len(caps) == 2
    for c in caps:
        assert isinstance(c, Captions) and set(c.regions) == set(REGION_NAMES)
        assert isinstance(c.global_, str) and isinstance(c.facial, str)
    single = MLLMCaptioner(model=model, models_dir=str(mllm_dir), max_new_tokens=8, batch_size=1)
    assert single.caption(samples[1:2])[0] == caps[1]  # left padding does not change greedy text

    info = batched.model_info()
    assert info.name == f"mllm/{model}" and len(info.weights_sha256) == 64
    p = info.prompt
    assert p["protocol"] == "fgid-2q" and p["do_sample"] is False and p["num_beams"] == 1
    assert p["global_question"] == FGID_GLOBAL_QUESTION
    assert FGID_FACIAL_QUESTION in p["rendered"]["facial"]
    clone = pickle.loads(pickle.dumps(batched))
    assert not any(k.startswith("_m_") for k in vars(clone))


def test_custom_prompts_are_recorded(mllm_dir: Path) -> None:
    cap = MLLMCaptioner(
        model="tiny-llava",
        models_dir=str(mllm_dir),
        global_question="Who is this?",
        prompt_template="USER: <image>\n{question} ASSISTANT:",
        max_new_tokens=4,
    )
    p = cap.model_info().prompt
    assert p["protocol"] == "custom" and p["template"].startswith("USER: <image>")
    assert p["rendered"]["global"] == "USER: <image>\nWho is this? ASSISTANT:"


def test_split_prose_answer() -> None:
    text = (
        "The person in the image has an oval face with smooth, fair skin. Her ears are small "
        "and close to the head. She has large brown eyes and thin eyebrows. Her nose is small "
        "and straight, which suits her face. The woman has a thin mouth with pink lips."
    )
    r = split_facial_answer(text)
    assert r["face"].startswith("The person in the image has an oval face")
    assert r["ears"] == "Her ears are small and close to the head."
    assert r["eyes"] == "She has large brown eyes and thin eyebrows."
    assert r["nose"].startswith("Her nose is small")
    assert r["mouth"] == "The woman has a thin mouth with pink lips."


def test_split_listed_answer_and_missing_region() -> None:
    text = "1. **Face**: Round.\n2. **Eyes**: Blue, wide.\n3. Nose: Long.\n- Mouth: Full lips."
    r = split_facial_answer(text)
    assert r == {
        "face": "Round.",
        "ears": "",
        "eyes": "Blue, wide.",
        "nose": "Long.",
        "mouth": "Full lips.",
    }


# -- error paths ---------------------------------------------------------------------------------


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as e:
        MLLMCaptioner(model="llava-1.5-7b-hf", models_dir=str(tmp_path)).load()
    assert str(tmp_path / "mllm" / "llava-1.5-7b-hf" / "config.json") in one_line(e.value)


def test_missing_and_corrupt_weights(mllm_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mllm" / "tiny-llava"
    shutil.copytree(mllm_dir / "mllm" / "tiny-llava", folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    with pytest.raises(ModelFileError, match="weights not found") as e:
        MLLMCaptioner(model="tiny-llava", models_dir=str(tmp_path)).load()
    assert str(folder) in one_line(e.value)
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as e:
        MLLMCaptioner(model="tiny-llava", models_dir=str(tmp_path)).load()
    assert str(folder) in one_line(e.value)


def test_vllm_without_the_extra_names_it(mllm_dir: Path) -> None:
    pytest.importorskip("ray")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    cap = VLLMCaptioner(model="tiny-llava", models_dir=str(mllm_dir))
    with pytest.raises(MissingExtraError, match=r"fgid\[vllm\]"):
        cap.load()
    with pytest.raises(MissingExtraError, match=r"fgid\[vllm\]"):
        cap.ray_processor()
    info = cap.model_info()  # provenance needs no engine
    assert info.prompt["sampling"]["temperature"] == 0.0
    clone = pickle.loads(pickle.dumps(cap))
    assert clone.model == "tiny-llava"
