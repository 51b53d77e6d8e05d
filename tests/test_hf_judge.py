"""The `hf` judge backend on a tiny randomly initialised Qwen2.5-VL built locally (no hub, no download):
batching, ordering, determinism, think splitting, the parser's not-parsed path on nonsense output,
parameter errors, and (marked `triton`) the same backend and the SAM boxer served by a real tritonserver."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from srum_jobs.judging.parse import parse_global, parse_regions
from srum_jobs.judging.protocols import BoxOptions, JudgeBackend, JudgeParams, JudgeReply
from srum_jobs.models.common import ParamError, split_think

pytest.importorskip("transformers")
pytest.importorskip("torchvision")  # the Qwen2-VL processor's video half imports it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from srum_jobs.models.hf_judge import save_random_qwen2_5_vl

    return save_random_qwen2_5_vl(tmp_path_factory.mktemp("qwen25vl-tiny"), seed=0)


@pytest.fixture(scope="module")
def backend(model_dir):
    from srum_jobs.models.hf_judge import HFJudgeBackend

    return HFJudgeBackend({"model_path": str(model_dir), "device": "cpu", "dtype": "float32", "max_batch_size": "2"})


def _image(seed: int, size=(64, 64)):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


# Same length in tokens: a batch then needs no padding, so batched and single answers must agree exactly.
INSTRUCTIONS = [f"Judge image {c}. Prompt: a red cube" for c in "ABCDE"]


def test_registry_loads_it_as_a_judge_backend(model_dir):
    from srum_jobs.judging.backends import load_judge_backend

    b = load_judge_backend("hf", {"model_path": str(model_dir), "device": "cpu"})
    assert isinstance(b, JudgeBackend)
    assert b.dtype.is_floating_point and str(b.dtype) == "torch.float32"  # auto on CPU


def test_batches_across_requests_in_order_and_equal_single_requests(backend):
    images = [_image(i) for i in range(5)]
    params = JudgeParams(max_new_tokens=12)
    batched = backend.generate(images, INSTRUCTIONS, params)      # chunks of 2, 2, 1
    assert len(batched) == 5 and all(isinstance(r, JudgeReply) for r in batched)
    assert all(isinstance(r.text, str) and isinstance(r.think_text, str) for r in batched)
    single = [backend.generate([im], [ins], params)[0] for im, ins in zip(images, INSTRUCTIONS)]
    assert batched == single
    # the images matter: not every request got the same text
    assert len({r.text for r in batched}) > 1


def test_greedy_decoding_is_deterministic_and_respects_max_new_tokens(backend, monkeypatch):
    generated = []
    real = backend.model.generate

    def spy(**kw):
        out = real(**kw)
        generated.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    monkeypatch.setattr(backend.model, "generate", spy)
    images = [_image(7), _image(8)]
    a = backend.generate(images, INSTRUCTIONS[:2], JudgeParams(max_new_tokens=16))
    b = backend.generate(images, INSTRUCTIONS[:2], JudgeParams(max_new_tokens=16))
    assert a == b
    backend.generate(images, INSTRUCTIONS[:2], JudgeParams(max_new_tokens=5))
    assert generated[0] <= 16 and generated[-1] <= 5 and generated[-1] < generated[0]


def test_sampling_path_runs_with_a_temperature(backend):
    out = backend.generate([_image(1)], INSTRUCTIONS[:1], JudgeParams(max_new_tokens=8, temperature=0.7))
    assert len(out) == 1 and isinstance(out[0].text, str)


def test_nonsense_output_takes_the_parsers_not_parsed_path(backend):
    replies = backend.generate([_image(i) for i in range(3)], INSTRUCTIONS[:3], JudgeParams(max_new_tokens=48))
    for r in replies:
        assert r.text  # the random model does say something...
        g = parse_global(r.text)
        assert g.parsed is False and g.score is None  # ...but never a silent score
        assert parse_regions(r.text, 3).parsed is False


def test_think_prompt_is_rendered_only_in_think_mode(backend):
    with_think = backend.render("Judge it.", think=True)
    without = backend.render("Judge it.", think=False)
    assert "<think>" in with_think and "<think>" not in without
    assert without.rstrip().endswith("assistant")  # generation prompt of the chat template
    assert "<|image_pad|>" in without  # the image placeholder the processor expands


def test_think_mode_generates(backend):
    out = backend.generate([_image(3)], INSTRUCTIONS[:1], JudgeParams(max_new_tokens=8, think=True))
    assert isinstance(out[0], JudgeReply)


@pytest.mark.parametrize("text, answer, think", [
    ("<think>count the cubes</think>Score: 0.5", "Score: 0.5", "count the cubes"),
    ("<think>a</think> mid <think>b</think>\nScore: 1", "Score: 1", "a mid b"),
    ("opened in the prompt</think>Score: -0.2", "Score: -0.2", "opened in the prompt"),
    ("Score: 0.1<think>cut off while thinki", "Score: 0.1", "cut off while thinki"),
    ("<THINKING>x</THINKING>y", "y", "x"),
    ("no thinking at all", "no thinking at all", ""),
    ("", "", ""),
])
def test_split_think(text, answer, think):
    assert split_think(text) == (answer, think)


def test_parameter_errors_name_the_parameter(model_dir, tmp_path):
    from srum_jobs.models.hf_judge import HFJudgeBackend

    with pytest.raises(ParamError, match="model_path"):
        HFJudgeBackend({})
    with pytest.raises(ParamError, match="does not exist.*model-hub name"):
        HFJudgeBackend({"model_path": "Qwen/Qwen2.5-VL-7B-Instruct"})
    with pytest.raises(ParamError, match="max_batch_size"):
        HFJudgeBackend({"model_path": str(model_dir), "max_batch_size": "0"})
    with pytest.raises(ParamError, match="dtype"):
        HFJudgeBackend({"model_path": str(model_dir), "dtype": "int3"})
    with pytest.raises(ParamError, match=r"unknown parameter\(s\) \['max_batchsize'\]"):
        HFJudgeBackend({"model_path": str(model_dir), "max_batchsize": "4"})
    with pytest.raises(ParamError, match="no loadable processor"):
        HFJudgeBackend({"model_path": str(tmp_path)})


def test_mismatched_inputs_are_rejected(backend):
    with pytest.raises(ParamError, match="2 images but 1 instructions"):
        backend.generate([_image(0), _image(1)], ["x"], JudgeParams())
    with pytest.raises(ParamError, match="image 0"):
        backend.generate(["not an image"], ["x"], JudgeParams())


def test_weights_from_object_storage_are_copied_once_and_verified(model_dir, tmp_path, s3_endpoint, s3_bucket,
                                                                  monkeypatch):
    from srum_jobs.models.common import local_weights
    from srum_jobs.models.hf_judge import HFJudgeBackend
    from srum_jobs.storage import open_store

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    store = open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    for f in sorted(model_dir.iterdir()):
        store.put_file(f"models/judge/{f.name}", f)
    monkeypatch.setenv("SRUM_WEIGHTS_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{s3_bucket}/models/judge"
    local = local_weights(uri, "test")
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith(".")) == sorted(p.name for p in model_dir.iterdir())
    b = HFJudgeBackend({"model_path": uri, "device": "cpu"})
    assert b.model_path == local
    # a corrupt object is refused, and a half-finished copy (no completion marker) is never reused
    store.put_bytes("bad/model.safetensors", b"not the bytes the checksum says", checksum=False)
    store.put_bytes("bad/model.safetensors.sha256", b"0" * 64)
    with pytest.raises(Exception, match="corrupt"):
        local_weights(f"s3://{s3_bucket}/bad", "test")
    markers = list((tmp_path / "cache").glob("*/.srum-complete.json"))
    assert markers == [local / ".srum-complete.json"]       # only the good copy counts as complete
    assert not list((tmp_path / "cache").glob("*.partial-*"))  # and the failed one left nothing behind


# ----------------------------------------------------------------------------------- real tritonserver
def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.triton
@pytest.mark.slow
def test_hf_judge_and_sam_boxer_through_a_real_triton_server(model_dir, backend, tmp_path, monkeypatch):
    import os
    import sysconfig

    from srum_jobs.judging.client import TritonTransport
    from srum_jobs.judging.server import LocalTritonServer, TritonNotFound, local_models
    from srum_jobs.models.sam_boxer import TINY, SamBoxer, save_random_sam

    sam_ckpt = save_random_sam(tmp_path / "sam-tiny.pth", TINY, seed=0)
    # random weights: SAM's default quality thresholds would drop every mask (see test_sam_boxer.py)
    sam_params = {"model_type": "custom", "model_path": str(sam_ckpt), "device": "cpu", "pred_iou_thresh": "0",
                  "stability_score_thresh": "0",
                  **{k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in TINY.__dict__.items()}}
    judge_params = {"model_path": str(model_dir), "device": "cpu", "dtype": "float32", "max_batch_size": "4"}
    # The python backend stub links the first libpython3.11 the loader finds (here Debian's, an older
    # patch release than this interpreter); transformers imports ssl, whose extension module needs this
    # interpreter's libpython. Put that first, as the product images do by having only one Python.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and os.path.exists(os.path.join(libdir, "libpython3.11.so.1.0")):
        monkeypatch.setenv("LD_LIBRARY_PATH", os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p))
    try:
        server = LocalTritonServer(local_models("hf", judge_params, "sam", sam_params), run_dir=tmp_path / "triton")
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not installed: {e}")
    images = [_image(20 + i) for i in range(4)]
    params = JudgeParams(max_new_tokens=16)
    expected = backend.generate(images, INSTRUCTIONS[:4], params)
    sam = SamBoxer(sam_params)
    opts = BoxOptions(points_per_side=4, max_regions=8)
    expected_boxes = sam.propose([images[0]], opts)[0]

    async def run():
        async with TritonTransport(server.grpc_url) as t:
            replies = await asyncio.gather(*[t.judge(_png(im), ins, params) for im, ins in zip(images, INSTRUCTIONS)])
            boxes = await t.propose_boxes(_png(images[0]), opts)
            return replies, boxes

    with server:
        replies, boxes = asyncio.run(run())
    assert list(replies) == expected
    np.testing.assert_allclose(boxes.boxes, expected_boxes.boxes)
    np.testing.assert_allclose(boxes.areas, expected_boxes.areas)


def test_missing_weights_are_a_config_error_naming_the_location(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    """Issue 15: a missing checkpoint fails fast (config error -> the Jobs' FailJob exit code), never as a crash
    that the Job retries; the experiment's endpoint is used, not AWS."""
    from srum_jobs.config import ConfigError
    from srum_jobs.models.common import local_weights

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("SRUM_WEIGHTS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"weights location '/nowhere/judge' does not exist"):
        local_weights("/nowhere/judge", "hf judge backend")
    with pytest.raises(ConfigError, match=rf"no weights under s3://{s3_bucket}/absent \(endpoint {s3_endpoint}\)"):
        local_weights(f"s3://{s3_bucket}/absent", "hf judge backend", endpoint_url=s3_endpoint)
