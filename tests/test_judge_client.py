"""The gRPC judge client (`TritonTransport`) against the real local tritonserver: readiness errors, retries,
deadlines, bounded in-flight requests, balancing over resolved addresses, and the storage cache."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import numpy as np
import pytest

from srum_jobs.config import JudgeConfig
from srum_jobs.judging.client import (JudgeEndpointError, JudgeRequestError, JudgeUnavailable, TritonTransport,
                                      cache_digest, default_cache_key, parse_url)
from srum_jobs.judging.protocols import BoxOptions, JudgeParams, JudgeReply
from srum_jobs.layout import RunLayout
from srum_jobs.storage import open_store


def _png(seed: int, size: int = 32) -> bytes:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for _ in range(2):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        draw.rectangle((x0, y0, x0 + size // 3, y0 + size // 3), fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _instruction(i: int) -> str:
    from srum_jobs.judging.templates import load_templates

    return load_templates().render_global(f"a red square left of a blue circle, take {i}", 32, 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(coro):
    return asyncio.run(coro)


# ============================================================================================ no server
@pytest.mark.parametrize("url, expected", [
    ("judge.srum.svc:8001", ("judge.srum.svc", 8001)),
    ("dns:///judge-headless.srum.svc.cluster.local:8001", ("judge-headless.srum.svc.cluster.local", 8001)),
    ("127.0.0.1:9", ("127.0.0.1", 9)),
    ("[::1]:8001", ("::1", 8001)),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["judge", "http://judge:8001", "judge:0", "judge:99999", ":8001"])
def test_parse_url_rejects(url):
    with pytest.raises(JudgeEndpointError, match="judge url"):
        parse_url(url)


def test_cache_digest_changes_with_every_part_of_the_key():
    base = dict(kind="judge", model="srum_judge", version="1", image_sha256="a" * 64,
                request={"instruction_sha256": "b" * 64, "max_new_tokens": 8, "temperature": 0.0, "think": False})
    d0 = cache_digest(**base)
    assert d0 == cache_digest(**base)
    for change in (dict(kind="boxes"), dict(model="srum_evaluator"), dict(version="2"), dict(image_sha256="c" * 64),
                   dict(request={**base["request"], "instruction_sha256": "d" * 64}),
                   dict(request={**base["request"], "max_new_tokens": 9}),
                   dict(request={**base["request"], "temperature": 0.7}),
                   dict(request={**base["request"], "think": True})):
        assert cache_digest(**{**base, **change}) != d0, change
    assert default_cache_key(d0) == f"judge-cache/{d0[:2]}/{d0}.json"


def test_from_config_maps_the_judge_section(tmp_path):
    cfg = JudgeConfig(url="judge.example:8001", judge_version="3", max_in_flight=7, retries=2, timeout_s=5.0,
                      team="vision", evaluator_model="srum_evaluator")
    store = open_store(f"file://{tmp_path}")
    layout = RunLayout(store, "exp-a")
    t = TritonTransport.from_config(cfg, experiment="exp-a", store=store, cache_key=layout.cache_key)
    assert (t.host, t.port, t.judge_model, t.judge_version) == ("judge.example", 8001, "srum_judge", "3")
    assert (t.max_in_flight, t.retries, t.timeout_s) == (7, 2, 5.0)
    assert t.parameters == {"experiment": "exp-a", "team": "vision"}
    assert t.cache_store is store and t.cache_key("ab12") == "exp-a/judge-cache/ab/ab12.json"
    ev = TritonTransport.from_config(cfg, url="127.0.0.1:1", evaluation=True)
    assert (ev.url, ev.judge_model, ev.judge_version) == ("127.0.0.1:1", "srum_evaluator", "")
    no_cache = TritonTransport.from_config(cfg.model_copy(update={"cache": False}), store=store)
    assert no_cache.cache_store is None
    with pytest.raises(JudgeEndpointError, match="judge.url is not set"):
        TritonTransport.from_config(JudgeConfig())


def test_nothing_listening_is_a_clear_error():
    port = _free_port()

    async def go():
        async with TritonTransport(f"127.0.0.1:{port}", connect_timeout_s=1):
            pass

    with pytest.raises(JudgeEndpointError) as e:
        _run(go())
    msg = str(e.value)
    assert f"no ready Triton judge server at 127.0.0.1:{port} (waited 1 s)" in msg
    assert "nothing answers gRPC there" in msg
    assert "Triton's gRPC endpoint" in msg


def test_unresolvable_host_is_a_clear_error():
    async def go():
        async with TritonTransport("no-such-judge.invalid:8001"):
            pass

    with pytest.raises(JudgeEndpointError, match="cannot resolve the judge host 'no-such-judge.invalid'"):
        _run(go())


def test_requests_need_start():
    t = TritonTransport("127.0.0.1:1")
    with pytest.raises(Exception, match=r"start\(\) was not called"):
        _run(t.judge(_png(0), "x", JudgeParams()))


# ============================================================================================ real server
@pytest.mark.triton
def test_http_port_given_as_grpc_port_is_named(triton_server):
    async def go():
        async with TritonTransport(f"127.0.0.1:{triton_server.http_port}", connect_timeout_s=1):
            pass

    with pytest.raises(JudgeEndpointError, match="looks like Triton's HTTP port, not its gRPC port"):
        _run(go())


@pytest.mark.triton
def test_missing_model_lists_what_the_server_has(triton_server):
    async def go():
        async with TritonTransport(triton_server.grpc_url, judge_model="srum_judgee"):
            pass

    with pytest.raises(JudgeEndpointError) as e:
        _run(go())
    assert "no ready model 'srum_judgee' version latest" in str(e.value)
    assert "srum_judge v1 (READY)" in str(e.value) and "srum_boxer v1 (READY)" in str(e.value)


@pytest.mark.triton
def test_identity_reports_the_resolved_versions(triton_server):
    async def go():
        async with TritonTransport(triton_server.grpc_url) as t:
            return t.identity(), t.addresses()

    ident, addrs = _run(go())
    assert ident == {"judge_model": "srum_judge", "judge_version": "1", "boxer_model": "srum_boxer",
                     "boxer_version": "1"}
    assert addrs == [triton_server.grpc_url]


@pytest.mark.triton
def test_invalid_argument_is_not_retried(triton_server):
    async def go():
        async with TritonTransport(triton_server.grpc_url, retries=5) as t:
            with pytest.raises(JudgeRequestError) as e:
                await t.judge(b"not an image", _instruction(0), JudgeParams())
            return e.value, t.stats

    err, stats = _run(go())
    assert err.status == "INVALID_ARGUMENT" and "input IMAGE is not a readable image" in str(err)
    assert stats.sent == 1 and stats.retries == 0


@pytest.mark.triton
def test_deadline_exceeded_is_retried_then_reported(triton_server):
    import io

    from PIL import Image

    # 4 MB of noise: sending and decoding it alone takes far longer than the 0.5 ms deadline (a small image
    # is answered in about a millisecond now that the batcher no longer waits; issue 15)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(buf, "PNG")
    big = buf.getvalue()

    async def go():
        async with TritonTransport(triton_server.grpc_url, timeout_s=0.0005, retries=2, backoff_s=0.01) as t:
            with pytest.raises(JudgeUnavailable) as e:
                await t.judge(big, _instruction(1), JudgeParams(max_new_tokens=64))
            return e.value, t.stats

    err, stats = _run(go())
    assert "DEADLINE_EXCEEDED" in str(err) and "after 3 attempts" in str(err)
    assert stats.sent == 3 and stats.retries == 2


@pytest.mark.triton
def test_in_flight_requests_are_bounded(triton_server):
    limit, seen = 3, {"now": 0, "max": 0}

    async def go():
        async with TritonTransport(triton_server.grpc_url, max_in_flight=limit) as t:
            for ch in t._channels.values():
                real = ch.client.infer

                async def counted(*a, _real=real, **kw):
                    seen["now"] += 1
                    seen["max"] = max(seen["max"], seen["now"])
                    try:
                        return await _real(*a, **kw)
                    finally:
                        seen["now"] -= 1

                ch.client.infer = counted
            return await asyncio.gather(*[t.judge(_png(i), _instruction(i), JudgeParams(max_new_tokens=16))
                                          for i in range(20)])

    replies = _run(go())
    assert len(replies) == 20 and all(isinstance(r, JudgeReply) for r in replies)
    assert seen["max"] == limit


@pytest.mark.triton
def test_requests_spread_over_every_resolved_address_and_skip_a_dead_one(triton_server):
    port = triton_server.grpc_port
    dead = f"127.0.0.1:{_free_port()}"
    # One name, three addresses: two reach the server (as two replicas would), one is a replica that died.
    addresses = [f"127.0.0.1:{port}", dead, f"localhost:{port}"]

    async def go():
        async with TritonTransport(f"judge-headless.test:{port}", resolver=lambda h, p: addresses, retries=4,
                                   backoff_s=0.01, cooldown_s=60) as t:
            replies = await asyncio.gather(*[t.judge(_png(i), _instruction(i), JudgeParams(max_new_tokens=16))
                                             for i in range(24)])
            return replies, t.stats, t.addresses()

    replies, stats, addrs = _run(go())
    assert addrs == addresses
    assert all(isinstance(r, JudgeReply) for r in replies)
    live = [stats.per_address.get(a, 0) for a in (addresses[0], addresses[2])]
    assert min(live) >= 8, stats.per_address          # both live replicas carried a fair share
    # the dead replica was found down at start (readiness) and is skipped while cooling down
    assert stats.per_address.get(dead, 0) == 0, stats.per_address


@pytest.mark.triton
def test_second_run_is_served_from_the_storage_cache(triton_server, tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    layout = RunLayout(store, "exp-cache")
    images = [(_png(100 + i), _instruction(100 + i)) for i in range(5)]

    def inference_count(stats, model):
        # protobuf's JSON leaves out zero counters
        return next(int(m.get("inference_count", 0)) for m in stats["model_stats"] if m["name"] == model)

    async def run_once():
        async with TritonTransport(triton_server.grpc_url, cache_store=store, cache_key=layout.cache_key,
                                   experiment="exp-cache") as t:
            # the shared server records a batch's statistics after it replied: an earlier test's last
            # batches can land after a single read, so wait until two reads 0.2 s apart agree
            before = await t.statistics()
            for _ in range(50):
                await asyncio.sleep(0.2)
                again = await t.statistics()
                if all(inference_count(again, m) == inference_count(before, m) for m in ("srum_judge", "srum_boxer")):
                    break
                before = again
            replies = await asyncio.gather(*[t.judge(p, s, JudgeParams(max_new_tokens=32)) for p, s in images])
            boxes = await t.propose_boxes(images[0][0], BoxOptions(max_regions=4))
            after = await t.statistics()
            served = {m: inference_count(after, m) - inference_count(before, m) for m in ("srum_judge", "srum_boxer")}
            return replies, boxes, t.stats, served

    first, boxes1, stats1, served1 = _run(run_once())
    second, boxes2, stats2, served2 = _run(run_once())
    assert (stats1.cache_hits, stats1.cache_misses) == (0, 6) and served1 == {"srum_judge": 5, "srum_boxer": 1}
    assert (stats2.cache_hits, stats2.cache_misses) == (6, 0) and served2 == {"srum_judge": 0, "srum_boxer": 0}
    assert second == first
    np.testing.assert_array_equal(boxes2.boxes, boxes1.boxes)
    assert len(store.list("exp-cache/judge-cache/")) == 6
    # other generation parameters are another judgment: not a hit

    async def other_params():
        async with TritonTransport(triton_server.grpc_url, cache_store=store, cache_key=layout.cache_key) as t:
            await t.judge(images[0][0], images[0][1], JudgeParams(max_new_tokens=33))
            return t.stats

    assert _run(other_params()).cache_misses == 1


@pytest.mark.triton
def test_requests_survive_a_server_restart(triton_server):
    n_workers, per_worker = 4, 10
    restarted = threading.Event()

    async def go():
        async with TritonTransport(triton_server.grpc_url, retries=30, backoff_s=0.1, max_backoff_s=1.0,
                                   timeout_s=30) as t:
            done = []

            async def worker(w):
                for k in range(per_worker):
                    i = w * per_worker + k
                    done.append(await t.judge(_png(500 + i), _instruction(500 + i), JudgeParams(max_new_tokens=16)))
                    await asyncio.sleep(0.05)

            async def restart_midway():
                while len(done) < 8:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(triton_server.restart)
                restarted.set()

            await asyncio.gather(restart_midway(), *[worker(w) for w in range(n_workers)])
            return done, t.stats

    started = time.monotonic()
    done, stats = _run(go())
    assert restarted.is_set()
    assert len(done) == n_workers * per_worker and all(isinstance(r, JudgeReply) for r in done)
    assert stats.retries > 0 and stats.failed == 0, stats
    assert time.monotonic() - started < 240
