"""Triton batching configurations side by side, measured by Triton's own `perf_analyzer`.

The same toy judge backend is served as `srum_judge` under each batching setting in turn (one local
tritonserver per setting, one after the other, in this one run): the setting before issue 15, the checked-in
production config (`triton_models/srum_judge/config.pbtxt`), and with --candidates the alternatives it was
chosen from. For every setting and every concurrency (default 1, 4, 16, 64) perf_analyzer sends in-grammar
toy judgments (benchmarks/judge_inputs.py) over gRPC and exports every request's timestamps; from those this
script reports throughput, p50, p95, max and the share of requests slower than 250 ms. Nothing is taken
from the best round: every request of every measurement window counts.

perf_analyzer is the binary inside the `tritonclient==2.45.0` wheel (the PyPI `perf-analyzer` package is an
empty placeholder). Get it without touching the project's environment:

    pip download --no-deps tritonclient==2.45.0 --only-binary=:all: --platform manylinux1_x86_64 -d /tmp/pa
    cd /tmp/pa && unzip -q tritonclient-2.45.0-*.whl 'tritonclient-2.45.0.data/*'
    apt-get install libb64-0d      # it links libb64 and libcudart.so.12 (a CPU run needs only the file)
    python benchmarks/bench_judge_batching.py --perf-analyzer /tmp/pa/tritonclient-2.45.0.data/data/bin/perf_analyzer

`--cudart-dir` names a folder with libcudart.so.12 (default: a link to the copy the nvidia-pytriton wheel
bundles is made in a temporary folder).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from judge_inputs import toy_judge_requests  # noqa: E402

# The settings compared. "production" is whatever triton_models/srum_judge/config.pbtxt says now.
SETTINGS: Dict[str, Dict] = {
    "before: preferred [8,16], delay 20 ms, 1 inst": {"preferred_batch_sizes": [8, 16], "max_queue_delay_us": 20000,
                                                      "instances": 1},
    "production (triton_models/)": {},
}
# --candidates: the alternatives the production setting was chosen from
CANDIDATES: Dict[str, Dict] = {
    "bare: no preferred, no delay, 1 inst": {"preferred_batch_sizes": [], "max_queue_delay_us": 0, "instances": 1},
    "delay 5 ms, no preferred, 1 inst": {"preferred_batch_sizes": [], "max_queue_delay_us": 5000, "instances": 1},
    "preferred [8,16], delay 20 ms, 2 inst": {"preferred_batch_sizes": [8, 16], "max_queue_delay_us": 20000,
                                              "instances": 2},
}
STALL_MS = 250.0


def perf_input_file(path: Path, n: int, max_new_tokens: int) -> None:
    """perf_analyzer's --input-data JSON: one entry per request, cycled through in order."""
    data = []
    for png, instruction in toy_judge_requests(n, seed=1):
        # b64 data of a BYTES tensor is Triton's serialised form: each element prefixed by its uint32 length
        data.append({"IMAGE": {"b64": base64.b64encode(struct.pack("<I", len(png)) + png).decode()},
                     "INSTRUCTION": [instruction],
                     "MAX_NEW_TOKENS": [max_new_tokens], "TEMPERATURE": [0.0], "THINK": [False]})
    path.write_text(json.dumps({"data": data}))


def cudart_dir(given: Optional[str]) -> str:
    if given:
        return given
    from srum_jobs.judging.server import TritonInstall

    libs = TritonInstall.find().libs_dir
    found = sorted(libs.glob("libcudart*.so.12*"))
    if not found:
        raise SystemExit(f"no libcudart.so.12 in {libs}; pass --cudart-dir")
    d = Path(tempfile.mkdtemp(prefix="srum-cudart-"))
    (d / "libcudart.so.12").symlink_to(found[0])
    return str(d)


def latencies_ms(export: Path) -> List[float]:
    """Every request's latency (first response - send) from a perf_analyzer profile export."""
    doc = json.loads(export.read_bytes().decode("utf-8", "replace"))  # inputs are raw PNG bytes
    out: List[float] = []
    for exp in doc.get("experiments", []):
        for req in exp.get("requests", []):
            resp = req.get("response_timestamps") or []
            if resp:
                out.append((resp[0] - req["timestamp"]) / 1e6)
    return out


def pct(values: List[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_perf(pa: str, env: Dict[str, str], url: str, model: str, concurrency: int, inputs: Path,
             window_ms: int, trials: int, export: Path) -> Dict:
    cmd = [pa, "-m", model, "-u", url, "-i", "grpc", "--concurrency-range", str(concurrency),
           "--input-data", str(inputs), "--measurement-interval", str(window_ms), "--max-trials", str(trials),
           "--stability-percentage", "999", "--profile-export-file", str(export)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    # exit 2: "failed to obtain stable measurement" -- the windows were still measured and exported; a
    # stall-prone config is exactly what never looks stable, so it is reported, not dropped
    if res.returncode not in (0, 2) or not export.is_file():
        raise SystemExit(f"perf_analyzer failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    lat = latencies_ms(export)
    doc = json.loads(export.read_bytes().decode("utf-8", "replace"))  # inputs are raw PNG bytes
    # throughput over the measured windows: requests whose send time falls inside them / their length
    thr = []
    for exp in doc.get("experiments", []):
        bounds = exp.get("window_boundaries") or []
        reqs = exp.get("requests", [])
        for a, b in zip(bounds[:-1], bounds[1:]):
            n = sum(1 for r in reqs if a <= r["timestamp"] < b and r.get("response_timestamps"))
            if b > a:
                thr.append(n / ((b - a) / 1e9))
    return {"concurrency": concurrency, "requests": len(lat), "perf_analyzer_stable": res.returncode == 0,
            "throughput_per_s_windows": thr,
            "throughput_per_s": statistics.median(thr) if thr else len(lat) / wall,
            "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "max_ms": max(lat),
            "share_over_250ms": sum(v > STALL_MS for v in lat) / len(lat), "over_250ms": sum(v > STALL_MS for v in lat)}


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--perf-analyzer", required=True, help="path of the perf_analyzer binary (tritonclient 2.45.0)")
    ap.add_argument("--cudart-dir", default=None)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--window-ms", type=int, default=4000, help="perf_analyzer measurement window")
    ap.add_argument("--trials", type=int, default=3, help="measurement windows per concurrency (all are kept)")
    ap.add_argument("--requests", type=int, default=6000, help="distinct input entries (above the toy cache of 4096)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--candidates", action="store_true", help="also measure the alternatives in CANDIDATES")
    ap.add_argument("--only", default=None, help="measure only settings whose label contains this text")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)

    from srum_jobs.judging.server import LocalTritonServer, ModelSpec

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = cudart_dir(args.cudart_dir) + (os.pathsep + env["LD_LIBRARY_PATH"]
                                                             if env.get("LD_LIBRARY_PATH") else "")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: Dict[str, List[Dict]] = {}
    with tempfile.TemporaryDirectory(prefix="srum-pa-") as tmp:
        inputs = Path(tmp) / "inputs.json"
        perf_input_file(inputs, args.requests, args.max_new_tokens)
        settings = {k: v for k, v in {**SETTINGS, **(CANDIDATES if args.candidates else {})}.items()
                    if not args.only or args.only in k}
        for label, overrides in settings.items():
            spec = ModelSpec("toy", {"preset": "test", "threads": "1"}, **overrides)
            with LocalTritonServer({"srum_judge": spec}, run_dir=Path(tmp) / f"server{len(results)}") as server:
                rows = []
                for c in concurrencies:
                    row = run_perf(args.perf_analyzer, env, server.grpc_url, "srum_judge", c, inputs,
                                   args.window_ms, args.trials, Path(tmp) / f"export-{len(results)}-{c}.json")
                    rows.append(row)
                    print(f"{label:46s} c={c:3d} {row['throughput_per_s']:8.1f} infer/s  "
                          f"(windows {', '.join(f'{t:.0f}' for t in row['throughput_per_s_windows'])})  "
                          f"p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  max {row['max_ms']:7.1f} ms  "
                          f"> 250 ms: {row['over_250ms']}/{row['requests']} ({100 * row['share_over_250ms']:.1f}%)",
                          flush=True)
                results[label] = rows
    figures = {"settings": {k: v or "checked-in config.pbtxt" for k, v in settings.items()}, "results": results,
               "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]}
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
