"""The judge server: backend registry and batch logic (no server), the generated model repository, and a
real local tritonserver (marked `triton`) serving the toy world's backends over real HTTP/gRPC."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from srum_jobs import registry
from srum_jobs.judging import backends
from srum_jobs.judging.backends import (BackendError, BadRequest, BoxItem, BoxerTensors, JudgeItem, JudgeTensors,
                                        backend_class, batch_log_line, decode_image, decode_text, model_settings,
                                        serve_boxer_batch, serve_judge_batch)
from srum_jobs.judging.protocols import BoxOptions, BoxProposal, JudgeParams, JudgeReply
from srum_jobs.local.judge_server import (JUDGE_MODEL, BOXER_MODEL, EVALUATOR_MODEL, LocalTritonServer, ModelSpec,
                                      TritonInstall, TritonNotFound, TritonStartError, default_model_source,
                                      generate_repository, group_members, local_models, read_model_config,
                                      triton_errors)


def png_bytes(size=(48, 32), color=(200, 30, 30), mode="RGB", rects=()):
    from PIL import Image, ImageDraw

    img = Image.new(mode, size, color)
    draw = ImageDraw.Draw(img)
    for box, fill in rects:
        draw.rectangle(box, fill=fill)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ============================================================================================ registry
class RecordingJudge:
    """A judge backend for the batch-logic tests: records each call; 'BOOM' in an instruction breaks a call."""

    def __init__(self, params):
        self.params = params
        self.calls = []

    def generate(self, images, instructions, params):
        self.calls.append((len(images), params))
        if any("BOOM" in i for i in instructions):
            raise RuntimeError("backend crashed on BOOM")
        return [JudgeReply(text=f"{i}|{im.size}|{params.max_new_tokens}", think_text="t" * params.think)
                for im, i in zip(images, instructions)]


class NotAJudge:
    def __init__(self, params):
        pass


def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError, match=r"unknown judge backend 'nope'; available: bagel, hf, toy, toy_rules"):
        backend_class("judge", "nope")
    with pytest.raises(BackendError, match=r"unknown boxer backend 'x'; available: components, sam"):
        backend_class("boxer", "x")
    with pytest.raises(BackendError, match="unknown backend kind"):
        backend_class("painter", "toy")


def test_registries_point_at_the_agreed_classes():
    assert registry.JUDGE_BACKENDS == {"toy": "srum_jobs.toy.judge_backend:ToyJudgeBackend",
                                       "hf": "srum_jobs.models.hf_judge:HFJudgeBackend",
                                       "bagel": "srum_jobs.models.bagel.judge:BagelJudgeBackend",
                                       "toy_rules": "srum_jobs.toy.rules_evaluator:ToyRulesEvaluator"}
    assert registry.BOXER_BACKENDS == {"components": "srum_jobs.toy.components:ComponentsBoxer",
                                       "sam": "srum_jobs.models.sam_boxer:SamBoxer"}


def test_module_class_names_load_and_are_checked_against_the_protocol():
    judge = backends.load_judge_backend(f"{__name__}:RecordingJudge", {"a": "1"})
    assert isinstance(judge, RecordingJudge) and judge.params == {"a": "1"}
    with pytest.raises(BackendError, match="does not implement JudgeBackend"):
        backends.load_judge_backend(f"{__name__}:NotAJudge")
    with pytest.raises(BackendError, match="has no class Missing"):
        backend_class("judge", f"{__name__}:Missing")


def test_missing_optional_dependency_is_named(tmp_path, monkeypatch):
    (tmp_path / "srum_fake_backend_mod.py").write_text("import srum_not_installed_dep_xyz\nclass B: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendError, match=r"needs the Python package 'srum_not_installed_dep_xyz'.*srum-jobs\[models\]"):
        backend_class("boxer", "srum_fake_backend_mod:B")
    with pytest.raises(BackendError, match="its module srum_no_such_module_q is not part of this installation"):
        backend_class("boxer", "srum_no_such_module_q:B")


# ============================================================================================ settings
def test_model_settings_env_overrides_placeholders_and_empty_values():
    s = model_settings("srum_judge", {"backend": "bagel", "model_path": "{version_dir}/weights", "dtype": "bfloat16",
                                      "device": "", "backend_max_batch": "8"},
                       version="3", version_dir="/repo/srum_judge/3",
                       environ={"SRUM_JUDGE_DTYPE": "float32", "SRUM_JUDGE_BACKEND": "hf", "SRUM_BOXER_DEVICE": "x",
                                "SRUM_JUDGE_TAG": "v{version}"})
    assert s.backend == "hf"
    assert s.backend_max_batch == 8
    # device was empty: dropped so the backend's own default applies; the boxer's variable is not ours
    assert s.params == {"model_path": "/repo/srum_judge/3/weights", "dtype": "float32", "tag": "v3"}


@pytest.mark.parametrize("params, message", [
    ({}, "no backend chosen.*SRUM_EVALUATOR_BACKEND"),
    ({"backend": "toy", "backend_max_batch": "-1"}, "backend_max_batch must be a non-negative integer"),
    ({"backend": "toy", "backend_max_batch": "many"}, "backend_max_batch must be a non-negative integer"),
    ({"backend": "toy", "model_path": "{model}/w"}, r"model_path=.*unknown placeholder \{model\}"),
])
def test_model_settings_errors_name_the_parameter(params, message):
    with pytest.raises(BackendError, match=message):
        model_settings("srum_evaluator", params, environ={})


# ============================================================================================ requests
def test_decode_image_accepts_any_mode_and_rejects_garbage_naming_the_input():
    img = decode_image(png_bytes(mode="L", color=128))
    assert img.mode == "RGB" and img.size == (48, 32)
    with pytest.raises(BadRequest, match="input IMAGE is not a readable image \\(7 bytes\\)"):
        decode_image(b"garbage", what="input IMAGE")
    with pytest.raises(BadRequest, match="image is empty"):
        decode_image(b"")
    truncated = png_bytes()[:60]
    with pytest.raises(BadRequest, match="not a readable image"):
        decode_image(truncated)


def test_decode_image_refuses_decompression_bombs():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (8200, 8200)).save(buf, "PNG")   # 67 M pixels in a few kB
    with pytest.raises(BadRequest, match="8200x8200, more than"):
        decode_image(buf.getvalue())


def test_decode_text_and_params_validation():
    assert decode_text(b"Prompt: a cat") == "Prompt: a cat"
    with pytest.raises(BadRequest, match="instruction is empty"):
        decode_text(b"  \n ")
    with pytest.raises(BadRequest, match="not UTF-8 text \\(byte 1\\)"):
        decode_text(b"a\xff")
    with pytest.raises(BadRequest, match="max_new_tokens must be >= 1"):
        backends.check_judge_params(0, 0.0, False)
    with pytest.raises(BadRequest, match="temperature must be >= 0, got nan"):
        backends.check_judge_params(5, float("nan"), False)
    with pytest.raises(BadRequest, match="min_area is a fraction"):
        backends.check_box_options(16, 5, 2.0)
    with pytest.raises(BadRequest, match="input X has 2 elements; send one item per request"):
        backends.single_value(np.array([[b"a"], [b"b"]], dtype=object), "X")
    with pytest.raises(BadRequest, match="input X is missing"):
        backends.single_value(None, "X")
    assert backends.single_value(None, "X", 7) == 7
    assert backends.request_parameters('{"team": "a"}') == {"team": "a"}
    assert backends.request_parameters("not json") == {} and backends.request_parameters("[1]") == {}


def _judge_item(text, params=JudgeParams()):
    return JudgeItem(image=decode_image(png_bytes()), instruction=text, params=params)


def test_judge_batch_groups_by_params_and_chunks():
    judge = RecordingJudge({})
    p_long, p_think = JudgeParams(max_new_tokens=99), JudgeParams(think=True)
    items = [_judge_item("a"), _judge_item("b", p_long), _judge_item("c"), _judge_item("d", p_think),
             _judge_item("e"), BadRequest("input IMAGE is empty")]
    out = serve_judge_batch(judge, items, max_chunk=2)
    assert [o.text.split("|")[0] if isinstance(o, JudgeReply) else str(o) for o in out] == \
        ["a", "b", "c", "d", "e", "input IMAGE is empty"]
    assert out[1].text.endswith("|99") and out[3].think_text == "t"
    # default params: 3 items in chunks of 2 -> calls of 2 and 1; the others one call each
    assert sorted(n for n, _ in judge.calls) == [1, 1, 1, 2]


def test_one_bad_request_does_not_fail_its_batch():
    judge = RecordingJudge({})
    out = serve_judge_batch(judge, [_judge_item("a"), _judge_item("BOOM"), _judge_item("c")])
    assert isinstance(out[0], JudgeReply) and isinstance(out[2], JudgeReply)
    assert isinstance(out[1], RuntimeError) and "BOOM" in str(out[1])
    # the batch call failed, then each request was retried alone
    assert [n for n, _ in judge.calls] == [3, 1, 1, 1]


def test_backend_returning_wrong_count_or_type_is_an_error_per_request():
    class Short(RecordingJudge):
        def generate(self, images, instructions, params):
            return [JudgeReply("x")] * (len(images) - 1) if len(images) > 1 else ["not a reply"]

    out = serve_judge_batch(Short({}), [_judge_item("a"), _judge_item("b")])
    assert all(isinstance(o, BackendError) for o in out)
    assert "returned str, not JudgeReply" in str(out[0])


def test_boxer_batch_normalises_arrays_and_checks_lengths():
    class Boxer:
        def propose(self, images, options):
            if options.max_regions == 0:
                return [BoxProposal(boxes=np.zeros((2, 4)), areas=np.zeros(1), confidence=np.zeros(2))] * len(images)
            return [BoxProposal(boxes=[[0, 0, 2, 2]], areas=[4], confidence=[1.0]) for _ in images]

    img = decode_image(png_bytes())
    ok = serve_boxer_batch(Boxer(), [BoxItem(img, BoxOptions())])[0]
    assert ok.boxes.dtype == np.float32 and ok.boxes.shape == (1, 4) and ok.areas.tolist() == [4.0]
    bad = serve_boxer_batch(Boxer(), [BoxItem(img, BoxOptions(max_regions=0))])[0]
    assert isinstance(bad, BackendError) and "2 boxes, 1 areas, 2 confidences" in str(bad)


def test_attribution_log_line_is_single_line_and_counts():
    who = [backends.attribution({"experiment": "exp-1", "team": "vision"}),
           backends.attribution({"experiment": "evil\nE1129 fake error", "team": "a=b"}),
           backends.attribution({})]
    line = batch_log_line("srum_judge", "2", who, [JudgeReply("x"), ValueError("bad"), JudgeReply("y")])
    assert "\n" not in line
    assert line.startswith("srum_judge v2 batch=3 ok=2 errors=1 ")
    assert "[experiment=exp-1 team=vision n=1]" in line
    assert "[experiment=evil_E1129_fake_error team=a_b n=1]" in line
    assert "[experiment=- team=- n=1]" in line


# ============================================================================================ repository
def test_checked_in_configs_are_production_values_matching_the_wire_names():
    from tritonclient.grpc import model_config_pb2 as mc

    src = default_model_source()
    for name, tensors in ((JUDGE_MODEL, JudgeTensors), (EVALUATOR_MODEL, JudgeTensors), (BOXER_MODEL, BoxerTensors)):
        cfg = read_model_config(src / name / "config.pbtxt")
        assert cfg.name == name and cfg.backend == "python"
        assert cfg.max_batch_size > 1
        assert cfg.HasField("dynamic_batching")
        # issue 15: preferred sizes with a queue delay stall requests ~500 ms; one instance stalls too
        assert not cfg.dynamic_batching.preferred_batch_size and cfg.dynamic_batching.max_queue_delay_microseconds == 0
        assert cfg.dynamic_batching.default_queue_policy.max_queue_size > 0
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
        assert cfg.version_policy.WhichOneof("policy_choice") == "latest"
        assert cfg.parameters["backend"].string_value
        wire = {v for k, v in vars(tensors).items() if k.isupper()}
        assert {t.name for t in cfg.input} | {t.name for t in cfg.output} == wire
        assert (src / name / "1" / "model.py").is_file()
    # the evaluator runs the judge's code, not a copy of it
    assert os.path.realpath(src / EVALUATOR_MODEL / "1" / "model.py") == \
        os.path.realpath(src / JUDGE_MODEL / "1" / "model.py")


def test_generated_repository_is_local(tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    models = local_models("toy", {"preset": "test"}, "components", {}, evaluator_backend="hf",
                          evaluator_params={"model_path": "/m/qwen", "device": "cpu"})
    models[JUDGE_MODEL].instances = 3
    models[BOXER_MODEL].max_queue_delay_us = 500
    models[BOXER_MODEL].preferred_batch_sizes = [4]
    repo = generate_repository(tmp_path / "repo", models)
    assert sorted(p.name for p in repo.iterdir()) == sorted([JUDGE_MODEL, BOXER_MODEL, EVALUATOR_MODEL])
    judge = read_model_config(repo / JUDGE_MODEL / "config.pbtxt")
    assert [(g.kind, g.count) for g in judge.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
    # production-only parameters (GPU dtype, weights path) are gone; the serving limit stays
    assert {k: v.string_value for k, v in judge.parameters.items()} == \
        {"backend": "toy", "preset": "test", "backend_max_batch": "8"}
    boxer = read_model_config(repo / BOXER_MODEL / "config.pbtxt")
    assert boxer.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(boxer.dynamic_batching.preferred_batch_size) == [4]
    # a count not overridden is the production one (CPU instead of GPU)
    assert [(g.kind, g.count) for g in boxer.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    ev = read_model_config(repo / EVALUATOR_MODEL / "config.pbtxt")
    assert ev.parameters["model_path"].string_value == "/m/qwen"
    ev_model = repo / EVALUATOR_MODEL / "1" / "model.py"
    assert not ev_model.is_symlink() and ev_model.read_text() == (repo / JUDGE_MODEL / "1" / "model.py").read_text()
    with pytest.raises(Exception, match="'srum_painter' is not in the repository"):
        generate_repository(tmp_path / "r2", {"srum_painter": ModelSpec("toy")})


def test_install_is_found_in_the_wheel_and_missing_wheel_is_explained(monkeypatch):
    inst = TritonInstall.find()
    assert inst.binary.name == "tritonserver" and os.access(inst.binary, os.X_OK)
    assert inst.stub.parent.name == f"{os.sys.version_info.major}.{os.sys.version_info.minor}"
    env = inst.environment({"PATH": "/usr/bin"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(inst.libs_dir)
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(os.sys.executable)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(TritonNotFound, match="needs the nvidia-pytriton wheel"):
        TritonInstall.find()


def test_triton_error_lines_are_extracted_from_its_log():
    log = ('I1129 07:43:44.43 7284 server.cc:305] "Waiting"\n'
           'E1129 07:43:44.28 7284 model_lifecycle.cc:654] "failed to load \'srum_judge\' version 1: Internal: '
           'BackendError: unknown judge backend \'nope\'\\n\\nAt:\\n  /x/backends.py(78): backend_class\\n"\n'
           'E1129 07:43:44.29 7284 cuda_driver.cc:1] "CudaDriverHelper has not been initialized."\n'
           'error: creating server: Internal - failed to load all models\n')
    assert triton_errors(log) == ["failed to load 'srum_judge' version 1: Internal: BackendError: "
                                  "unknown judge backend 'nope'"]


# ============================================================================================ real server


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read() or b"null")


def _run(coro):
    return asyncio.run(coro)


@pytest.mark.triton
def test_health_metadata_and_config(triton_server):
    assert _get(f"{triton_server.http_url}/v2/health/ready")[0] == 200
    _, meta = _get(f"{triton_server.http_url}/v2/models/{JUDGE_MODEL}")
    assert meta["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "IMAGE": "BYTES", "INSTRUCTION": "BYTES", "MAX_NEW_TOKENS": "INT32", "TEMPERATURE": "FP32", "THINK": "BOOL"}
    assert {o["name"] for o in meta["outputs"]} == {"TEXT", "THINK_TEXT"}
    _, cfg = _get(f"{triton_server.http_url}/v2/models/{BOXER_MODEL}/config")
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert "dynamic_batching" in cfg and cfg["instance_group"][0]["count"] == 2
    assert cfg["parameters"]["backend"]["string_value"] == "components"
    # metrics endpoint answers on its own port
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as r:
        assert b"nv_inference_request_success" in r.read()


@pytest.mark.triton
def test_clients_cannot_load_or_unload_models(triton_server):
    req = urllib.request.Request(f"{triton_server.http_url}/v2/repository/models/{JUDGE_MODEL}/unload", method="POST",
                                 data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert "not allowed" in e.value.read().decode()
    assert _get(f"{triton_server.http_url}/v2/models/{JUDGE_MODEL}/ready")[0] == 200


def _toy_inputs(n):
    """Flat-coloured images (what the toy world draws) and their global-judgment instructions."""
    from srum_jobs.judging.templates import load_templates

    tpl = load_templates()
    colors = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]
    out = []
    for i in range(n):
        png = png_bytes(size=(32, 32), color=(255, 255, 255),
                        rects=[((2 + i % 5, 3, 14, 15 + i % 7), colors[i % 4]), ((18, 16, 29, 28), colors[(i + 1) % 4])])
        out.append((png, tpl.render_global(f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square left of a "
                                           f"{['green', 'blue', 'yellow', 'red'][i % 4]} square", 32, 32)))
    return out


@pytest.mark.triton
def test_one_judgment_and_boxes_over_grpc_equal_the_backends_in_process(triton_server):
    from srum_jobs.judging.client import TritonTransport
    from tests.triton_fixture import TOY_BOXER_PARAMS, TOY_JUDGE_PARAMS

    (png, instruction), = _toy_inputs(1)
    params = JudgeParams(max_new_tokens=64)

    async def remote():
        async with TritonTransport(triton_server.grpc_url) as t:
            return await t.judge(png, instruction, params), await t.propose_boxes(png, BoxOptions(max_regions=5))

    reply, boxes = _run(remote())
    local_judge = backends.load_judge_backend("toy", TOY_JUDGE_PARAMS)
    local_boxer = backends.load_boxer_backend("components", TOY_BOXER_PARAMS)
    expected = serve_judge_batch(local_judge, [JudgeItem(decode_image(png), instruction, params)])[0]
    expected_boxes = serve_boxer_batch(local_boxer, [BoxItem(decode_image(png), BoxOptions(max_regions=5))])[0]
    assert isinstance(reply, JudgeReply) and reply.text.strip()
    assert reply == expected
    assert boxes.boxes.shape == (len(expected_boxes.boxes), 4) and len(expected_boxes.boxes) >= 2
    np.testing.assert_array_equal(boxes.boxes, expected_boxes.boxes)
    np.testing.assert_array_equal(boxes.areas, expected_boxes.areas)
    np.testing.assert_array_equal(boxes.confidence, expected_boxes.confidence)


async def _settled_stats(transport, read, done, timeout: float = 10.0):
    """read(statistics, JUDGE_MODEL), read again until done(value) or `timeout` s. Triton records a batch's
    statistics after the backend's execute returns, which is after its responses were sent, so the last
    counters can lag the replies by a moment (seen in CI: 35 of 48 requests counted)."""
    deadline = time.monotonic() + timeout
    value = read(await transport.statistics(JUDGE_MODEL), JUDGE_MODEL)
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = read(await transport.statistics(JUDGE_MODEL), JUDGE_MODEL)
    return value


def _batch_sizes(stats, model):
    for m in stats["model_stats"]:
        if m["name"] == model:
            # protobuf's JSON leaves out zero counters
            return {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                    for b in m.get("batch_stats", [])}
    return {}


@pytest.mark.triton
def test_dynamic_batching_forms_batches_under_concurrent_load(triton_server):
    from srum_jobs.judging.client import TritonTransport

    inputs = _toy_inputs(48)

    def executed(before, after):
        return sum(size * (n - before.get(size, 0)) for size, n in after.items())

    async def go():
        async with TritonTransport(triton_server.grpc_url, max_in_flight=48) as t:
            before = _batch_sizes(await t.statistics(JUDGE_MODEL), JUDGE_MODEL)
            replies = await asyncio.gather(*[t.judge(p, i, JudgeParams(max_new_tokens=32)) for p, i in inputs])
            after = await _settled_stats(t, _batch_sizes, lambda a: executed(before, a) >= 48)
        return replies, before, after

    replies, before, after = _run(go())
    assert all(isinstance(r, JudgeReply) for r in replies)
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert executed(before, after) == 48, new      # every request ran exactly once
    assert max(size for size, n in new.items() if n > 0) > 1, new
    # most requests travelled in shared batches, not one by one
    assert sum(size * n for size, n in new.items() if size > 1) >= 24, new


@pytest.mark.triton
def test_bad_requests_get_their_own_errors_within_a_batch(triton_server):
    from srum_jobs.judging.client import JudgeRequestError, TritonTransport

    good = _toy_inputs(12)
    bad = {3: (b"\x89PNG not really", good[3][1]), 7: (good[7][0], "   "), 9: (png_bytes()[:40], good[9][1])}
    requests = [bad.get(i, good[i]) for i in range(12)]

    async def one(t, png, text):
        try:
            return await t.judge(png, text, JudgeParams(max_new_tokens=16))
        except JudgeRequestError as e:
            return e

    async def go():
        async with TritonTransport(triton_server.grpc_url, max_in_flight=12, experiment="exp-bad",
                                   team="qa") as t:
            return await asyncio.gather(*[one(t, p, s) for p, s in requests]), t.stats

    results, stats = _run(go())
    for i, r in enumerate(results):
        if i in bad:
            assert isinstance(r, JudgeRequestError) and r.status == "INVALID_ARGUMENT", r
        else:
            assert isinstance(r, JudgeReply), r
    assert "input IMAGE is not a readable image" in str(results[3])
    assert "input INSTRUCTION is empty" in str(results[7])
    assert stats.retries == 0 and stats.sent == 12      # INVALID_ARGUMENT is never retried
    # the server log shows batches that mixed served and refused requests, attributed to the caller
    lines = [ln for ln in triton_server.log_path.read_text().splitlines() if "[experiment=exp-bad team=qa" in ln]
    mixed = [ln for ln in lines if " ok=0 " not in ln and " errors=0 " not in ln]
    assert mixed, lines


@pytest.mark.triton
def test_model_that_cannot_load_fails_start_quoting_triton(tmp_path):
    server = LocalTritonServer(local_models("no_such_judge", {}, "components", {}), run_dir=tmp_path)
    with pytest.raises(TritonStartError) as e:
        server.start()
    msg = str(e.value)
    assert "failed to load 'srum_judge' version 1" in msg
    assert "unknown judge backend 'no_such_judge'" in msg
    assert str(server.log_path) in msg
    assert not server.is_running()


@pytest.mark.triton
def test_stop_leaves_no_process_of_the_group_then_starts_again(triton_server):
    pgid = triton_server.pgid
    members = group_members(pgid)
    # the server and one backend stub per model instance
    assert pgid in members and len(members) >= 3, members
    ports = (triton_server.grpc_port, triton_server.http_port)
    triton_server.stop()
    assert group_members(pgid) == []
    for pid in members:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    assert not list(__import__("pathlib").Path("/dev/shm").glob(triton_server._shm_prefix + "*"))
    triton_server.start()
    assert (triton_server.grpc_port, triton_server.http_port) == ports
    assert _get(f"{triton_server.http_url}/v2/health/ready")[0] == 200
    assert triton_server.pgid != pgid


def test_serve_command_help_is_mounted_under_judge():
    from click.testing import CliRunner

    from srum_jobs.cli import main

    res = CliRunner().invoke(main, ["judge", "serve", "--help"])
    assert res.exit_code == 0, res.output
    for opt in ("--grpc-port", "--http-port", "--metrics-port", "--model-repository", "--backend", "--boxer"):
        assert opt in res.output


def ready_banner(proc) -> str:
    """What `srum judge serve` (a subprocess) prints up to its log line; fails with its stderr if not ready."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip().startswith("log"):
            break
    out = "".join(lines)
    assert "srum judge server ready" in out, out + proc.stderr.read()
    return out


@pytest.mark.triton
def test_serve_command_runs_in_the_foreground_until_sigterm(tmp_path):
    import re
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        grpc_port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "srum_jobs.cli", "judge", "serve", "--grpc-port", str(grpc_port),
           "--backend", "toy", "--param", "preset=test", "--boxer", "components", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out = ready_banner(proc)
        assert f"grpc     127.0.0.1:{grpc_port}" in out
        http_url = re.search(r"http\s+(http://\S+)", out).group(1)
        assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", out)
        server_pid = int(re.search(r"ready \(pid (\d+)\)", out).group(1))
        assert _get(f"{http_url}/v2/health/ready")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped on SIGTERM" in proc.stderr.read()
        assert group_members(server_pid) == []      # the server led its own group: nothing of it is left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _queue_ns(stats, model):
    for m in stats["model_stats"]:
        if m["name"] == model:
            q = m["inference_stats"].get("queue", {})
            return int(q.get("count", 0)), int(q.get("ns", 0))
    return 0, 0


@pytest.mark.triton
def test_sequential_requests_never_stall_in_the_batcher(triton_server):
    """Issue 15: with `preferred_batch_size` and a queue delay, Triton 2.51's dynamic batcher sleeps up to
    500 ms (its idle wait) after a batch it sent on the delay timer, because a new request does not wake it
    until the queue reaches the next preferred size. One client asking one question at a time then waits
    ~500 ms on 2-7 % of its requests. The server-side queue time tells the stall from CPU contention."""
    from srum_jobs.judging.client import TritonTransport

    inputs = _toy_inputs(150)

    async def go():
        async with TritonTransport(triton_server.grpc_url, boxer_model=None) as t:
            await t.judge(*inputs[0], JudgeParams(max_new_tokens=16))            # warm-up, not counted
            before = _queue_ns(await t.statistics(JUDGE_MODEL), JUDGE_MODEL)
            latencies = []
            for png, text in inputs[1:]:
                t0 = time.perf_counter()
                await t.judge(png, text, JudgeParams(max_new_tokens=16))
                latencies.append(time.perf_counter() - t0)
            after = await _settled_stats(t, _queue_ns, lambda a: a[0] - before[0] >= len(inputs) - 1)
        return latencies, after[0] - before[0], after[1] - before[1]

    latencies, queued, queue_ns = _run(go())
    assert queued == len(inputs) - 1
    # The old configuration queued 3-13 s in total over these 149 requests. The new one queues milliseconds,
    # plus a rare residual 500 ms wait (README "Judge server": two instances make a free slot at enqueue time
    # likely, not certain; a CI run saw one such wait, 534 ms in total). Two of them at most, as for latency.
    assert queue_ns / 1e6 < 1_200, f"requests waited {queue_ns / 1e6:.0f} ms in Triton's queue in total"
    # A stall adds its ~500 ms on top of a request's usual latency, so "slow" is measured from the median: a
    # loaded machine (a CI neighbour, tests beside `make run`) stretches every latency a little and the median
    # with them, where a fixed 400 ms bound counted 18 of 149 contended requests of 400-511 ms as stalls.
    median = float(np.median(latencies))
    slow = sorted(round(1e3 * v) for v in latencies if v > median + 0.4)
    assert len(slow) <= 2, (f"{len(slow)} of {len(latencies)} sequential judgments took over 400 ms more than "
                            f"the median ({1e3 * median:.0f} ms): {slow} ms")


@pytest.mark.triton
def test_checked_in_batching_is_what_every_server_serves(triton_server):
    """One source of truth: `srum judge serve` and `srum run` generate their repository from triton_models/,
    keeping its dynamic_batching; the images bake triton_models/ in (k8s/, the chart)."""
    src = read_model_config(default_model_source() / JUDGE_MODEL / "config.pbtxt").dynamic_batching
    _, cfg = _get(f"{triton_server.http_url}/v2/models/{JUDGE_MODEL}/config")
    served = cfg["dynamic_batching"]
    # Triton fills an empty preferred_batch_size with max_batch_size; with no queue delay it never waits for it
    assert list(served.get("preferred_batch_size", [])) in (list(src.preferred_batch_size), [cfg["max_batch_size"]])
    assert int(served.get("max_queue_delay_microseconds", 0)) == src.max_queue_delay_microseconds == 0
    assert [g["count"] for g in cfg["instance_group"]] == [sum(g.count for g in read_model_config(
        default_model_source() / JUDGE_MODEL / "config.pbtxt").instance_group)]


@pytest.mark.triton
def test_second_server_on_busy_ports_fails_naming_the_port(triton_server, tmp_path):
    """Issue 17 item 7: a second `srum judge serve` on the ports of a running server must not report the
    other server's readiness as its own."""
    from click.testing import CliRunner

    from srum_jobs.cli import main
    from srum_jobs.local.judge_server import TritonPortInUse

    second = LocalTritonServer(local_models("toy", {"preset": "test"}), run_dir=tmp_path / "second",
                               grpc_port=triton_server.grpc_port)
    with pytest.raises(TritonPortInUse, match=rf"grpc port 127\.0\.0\.1:{triton_server.grpc_port} is already in use"):
        second.start()
    assert second.proc is None
    res = CliRunner().invoke(main, ["judge", "serve", "--http-port", str(triton_server.http_port),
                                    "--run-dir", str(tmp_path / "cli")])
    assert res.exit_code != 0
    assert "srum judge server ready" not in res.output
    assert f"http port 127.0.0.1:{triton_server.http_port} is already in use" in res.output
    assert _get(f"{triton_server.http_url}/v2/health/ready")[0] == 200        # the first one is untouched
