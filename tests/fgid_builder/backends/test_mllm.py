"""mllm captioner on tiny LLaVA, Qwen2-VL and Idefics3 (SmolVLM) folders; FGID prompts and the
region splitter."""

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


@pytest.mark.parametrize("model", ["tiny-llava", "tiny-qwen2vl", "tiny-idefics3"])
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
        from pipelines.vllm_processor import ray_processor

        ray_processor(cap)
    info = cap.model_info()  # provenance needs no engine
    assert info.prompt["sampling"]["temperature"] == 0.0
    clone = pickle.loads(pickle.dumps(cap))
    assert clone.model == "tiny-llava"


# -- through the CLIs ------------------------------------------------------------------------------


def test_captioner_option_reaches_the_backend(mllm_dir: Path, shipped_photos, tmp_path) -> None:
    """`--captioner-option model=tiny-llava` picks the folder under --models-dir: `fgid stage
    caption` records it in every sample; `fgid build` checks it before Ray starts (a model
    folder that is not there: exit 2 naming it) and records the options in build.json."""
    import json

    from click.testing import CliRunner

    from pipelines.build import BuildConfig, check_models
    from pipelines.cli import main
    from pipelines.stages import sample_from_columns

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(shipped_photos[0], inp / shipped_photos[0].name)
    runner = CliRunner()

    def stage(*args: str) -> None:
        res = runner.invoke(main, ["stage", *args, "--no-progress"])
        assert res.exit_code == 0, res.output + repr(res.exception)

    stage("ingest", str(inp), str(tmp_path / "ingest.parquet"))
    prev = tmp_path / "ingest.parquet"
    for name in ("detect", "parse", "embed"):
        stage(name, str(prev), str(tmp_path / f"{name}.parquet"))
        prev = tmp_path / f"{name}.parquet"
    yml = tmp_path / "stages.yaml"
    yml.write_text("caption: {batch_size: 2, options: {max_new_tokens: 4}}\n")
    stage("caption", str(prev), str(tmp_path / "caption.parquet"), "--captioner", "mllm",
          "--models-dir", str(mllm_dir), "--captioner-option", "model=tiny-llava",
          "--stage-config", str(yml))  # fmt: skip
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(tmp_path / "caption.parquet").to_pylist()]
    ok = [sample_from_columns(r) for r in rows if r["status"] == "ok"]
    assert ok, rows
    for s in ok:
        info = s.models["caption"]
        prompt = json.loads(info["prompt"])  # a JSON string in every sample (sample.schema.json)
        assert info["name"] == "mllm/tiny-llava" and prompt["max_new_tokens"] == 4

    # fgid build: the driver-side check constructs the backend with the same options
    from fgid_builder.stage_resources import StageResources

    res = StageResources.from_dict({"caption": {"options": {"model": "tiny-llava"}}})
    cfg = BuildConfig(input=str(inp), out=str(tmp_path / "ds"), captioner="mllm",
                      models_dir=str(mllm_dir), resources=res)  # fmt: skip
    assert check_models(cfg)["caption"]["name"] == "mllm/tiny-llava"
    missing = runner.invoke(main, ["build", str(inp), str(tmp_path / "ds"), "--captioner", "mllm",
                                   "--models-dir", str(mllm_dir),
                                   "--captioner-option", "model=not-there"])  # fmt: skip
    assert missing.exit_code == 2, missing.output
    assert str(mllm_dir / "mllm" / "not-there") in missing.output.strip().splitlines()[-1]


def _key_paths(obj: object, prefix: str = "") -> set[str]:
    """Every dict key path of a JSON value (lists of dicts by their items' keys)."""
    if isinstance(obj, dict):
        out = set()
        for k, v in obj.items():
            out |= {f"{prefix}{k}"} | _key_paths(v, f"{prefix}{k}.")
        return out
    if isinstance(obj, list):
        return set().union(*(_key_paths(v, prefix) for v in obj)) if obj else set()
    return set()


def _fields(meta: dict) -> set[str]:
    return {p for p in _key_paths(meta) if not p.startswith("models.caption.prompt.")}


@pytest.mark.integration
def test_fgid_build_with_the_mllm_captioner(mllm_dir: Path, ray_local, tmp_path: Path) -> None:
    """`fgid build --demo OUT --captioner mllm --models-dir DIR --captioner-option
    model=tiny-llava` end to end through the Ray actors (embedded defaults for the other
    stages): the dataset passes the default build's schema checks, has the same samples as the
    embedded default stack on the same photos, with the same JSON fields (each captioner
    records its own settings), and captions from the model under the FGID protocol."""
    import json

    from click.testing import CliRunner

    from fgid_builder.demo import demo_photos
    from fgid_builder.process import ImageProcessor
    from fgid_builder.shards import iter_shard, shard_paths
    from pipelines.build import build_command
    from tests.fgid_builder.backends.conftest import check_built_dataset

    out = tmp_path / "out"
    args = [
        "--demo", str(out), "--captioner", "mllm", "--models-dir", str(mllm_dir),
        "--captioner-option", "model=tiny-llava", "--captioner-option", "max_new_tokens=8",
        "--workers", "1", "--no-progress", "--no-report",
    ]  # fmt: skip
    res = CliRunner().invoke(build_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = check_built_dataset(out, {"caption": "mllm/tiny-llava"})
    settings = json.loads((out / "build.json").read_text())
    assert settings["backend_options"]["caption"] == {"model": "tiny-llava", "max_new_tokens": 8}

    # the embedded default stack on the same photos, in process: same faces, same fields
    default = ImageProcessor.default()
    want: dict[str, dict] = {}
    for p in demo_photos():
        for m in default.process(p.read_bytes(), p.name).members:
            want[m["__key__"]] = json.loads(m["json"])
    got: dict[str, dict] = {}
    for tar in shard_paths(out / "shards"):
        for m in iter_shard(tar):
            got[m["__key__"]] = json.loads(m["json"])
    assert sorted(got) == sorted(want) == sorted(r["key"] for r in rows if r["status"] == "ok")
    for key, meta in got.items():
        # the same fields; each captioner records its own settings under models.caption.prompt
        assert _fields(meta) == _fields(want[key])
        assert meta["face"] == want[key]["face"] and meta["regions"] == want[key]["regions"]
        prompt = json.loads(meta["models"]["caption"]["prompt"])
        assert prompt["protocol"] == "fgid-2q" and prompt["max_new_tokens"] == 8
        assert prompt["do_sample"] is False and prompt["num_beams"] == 1
        assert meta["captions"] != want[key]["captions"]  # the model's words, not the describer's
