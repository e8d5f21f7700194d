"""``mobilenets serve`` under load, against the FastAPI endpoint tutorials write, in the same run.

Both servers classify the same JPEGs (640 x 480 photos-like, uploaded as multipart forms) with
MobileNetV3-Large 1.0 (random weights):

* ours: ``mobilenets serve`` on the file exported for the runtime it picks by default (OpenVINO
  where installed), with its default settings: dynamic batching, decoding on worker threads;
* the tutorial's: a FastAPI app with ``torchvision.models.mobilenet_v3_large()`` in eval mode and a
  plain ``def`` endpoint that decodes with PIL, applies torchvision transforms and runs the model
  per request (FastAPI runs it in its thread pool), under uvicorn.

Clients (httpx, asyncio, one keep-alive connection each) send requests back to back at 1, 8 and
32 at once; each level runs for ``--seconds`` (after ``--warmup`` seconds not counted) or
``--max-requests``, whichever ends first, the two servers taking turns level by level. The table
gives throughput and p50 / p99 latency; the target is at least 3x the tutorial's throughput at 32
clients with a p99 no worse. Writes ``benchmarks/results/serve_load.json``.

``--soak SECONDS``: our server alone, 32 clients, one request in ten malformed (not an image, a
truncated JPEG, a decompression bomb, a tensor of the wrong shape, malformed JSON, an unknown
model, a body over the limit); the good ones alternate between the image endpoint and binary
tensor ``infer``, each answer checked against the same file run in-process. Reports 5xx
responses, wrong answers, and the server's resident memory growth from the end of the first
tenth of the run (``/proc``). Writes ``benchmarks/results/serve_soak.json``.

Everything talks to loopback only, and every loop is bounded in time and requests.

    python benchmarks/serve_load.py                      # 20 s per level
    python benchmarks/serve_load.py --seconds 5          # a smoke run
    python benchmarks/serve_load.py --soak 120
"""

import argparse
import asyncio
import gzip
import io
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
LEVELS = (1, 8, 32)
IMAGES = 16
TARGET_SPEEDUP = 3.0
SOAK_CLIENTS = 32
SOAK_BODY_MB = 1  # our server's body limit in the soak, so that "over the limit" bodies stay small


# --------------------------------------------------------------------------------------------
# the tutorial's server (run in its own process: `serve_load.py tutorial-server --port P`)


def tutorial_app():
    """A FastAPI image classifier as tutorials write it: a torchvision model, PIL and transforms per request."""
    import torch
    import torchvision
    import torchvision.transforms as T
    from fastapi import FastAPI, File, UploadFile
    from PIL import Image

    app = FastAPI()
    model = torchvision.models.mobilenet_v3_large()
    model.eval()
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    @app.post("/predict")
    def predict(file: UploadFile = File(...)):  # noqa: B008 -- FastAPI's idiom
        image = Image.open(file.file).convert("RGB")
        x = transform(image).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        values, indices = probs.topk(5)
        return {"top": [{"index": int(i), "prob": float(p)} for p, i in zip(values, indices, strict=True)]}

    return app


def run_tutorial_server(port: int) -> None:
    import uvicorn
    uvicorn.run(tutorial_app(), host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------------------------
# setup


def make_images(n: int = IMAGES, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs of 640 x 480: gradients, stripes and noise, so they decode like photos, not flat colour."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    out = []
    for i in range(n):
        a, b = rng.uniform(0.2, 0.8, 2)
        rgb = np.stack([(xx * a + 60 * np.sin(yy / (17 + i))) % 255, (yy * b + 50 * np.cos(xx / (23 + i))) % 255,
                        ((xx + yy) * 0.2 + 40 * i) % 255], -1)
        rgb = (rgb + rng.normal(0, 8, rgb.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def random_model():
    """MobileNetV3-Large 1.0 with random weights whose logits differ between classes (a fresh
    network's head gives ~0 for all, which would make top-1 a coin toss between batch sizes)."""
    import torch

    from mobilenets.models import build_model
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large", width=1.0).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0, 0.05)
    return model


def export_for_default_runtime(folder: Path) -> tuple[Path, str]:
    """The model exported (dynamic batch) for the runtime ``mobilenets serve`` picks by default, and that runtime."""
    from mobilenets.deploy.export import export
    from mobilenets.deploy.runtimes import RUNTIMES
    from mobilenets.serve.models import default_backend
    backend = default_backend("mobilenet_v3_large")
    fmt = RUNTIMES[backend].format
    if fmt is None:  # torch: serve a checkpoint
        from mobilenets.weights import save_checkpoint
        path = folder / "mnv3.safetensors"
        save_checkpoint(path, random_model())
        return path, backend
    return export(random_model(), fmt, folder / f"mnv3{RUNTIMES[backend].suffix}", batch="dynamic").path, backend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ours(model: Path, backend: str, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mobilenets", "serve", f"mnv3={model}", "--port", "0", "--backend", backend, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        raise SystemExit(f"our server did not start: {line!r}")
    return proc, line.split()[-1]


def start_tutorial() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "tutorial-server", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/docs")
    return proc, url


def wait_ready(proc: subprocess.Popen, url: str, seconds: float = 120) -> None:
    import httpx
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up within {seconds:.0f} s")


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --------------------------------------------------------------------------------------------
# load


async def load(url: str, path: str, images: list[bytes], clients: int, seconds: float, warmup: float,
               max_requests: int) -> dict:
    """``clients`` connections posting the images (multipart, field ``file``) back to back; latency of the
    requests that start after ``warmup`` seconds and before ``seconds`` more have passed."""
    import httpx
    latencies: list[float] = []
    codes: dict[int, int] = {}
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.monotonic() < end and len(latencies) < max_requests:
            t0 = time.monotonic()
            try:
                r = await http.post(path, files={"file": ("image.jpg", images[i % len(images)], "image/jpeg")})
                code = r.status_code
            except httpx.HTTPError:
                code = -1
            t1 = time.monotonic()
            if t0 >= measure_from and t1 <= end:
                latencies.append(t1 - t0)
                codes[code] = codes.get(code, 0) + 1
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    elapsed = min(time.monotonic(), end) - measure_from
    ms = np.array(latencies) * 1000
    ok = codes.get(200, 0)
    return {"clients": clients, "requests": len(latencies), "ok": ok, "errors": len(latencies) - ok,
            "seconds": round(elapsed, 2), "throughput": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "codes": {str(k): v for k, v in sorted(codes.items())}}


def benchmark(args) -> dict:
    import httpx
    images = make_images()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        print("exporting MobileNetV3-Large 1.0 ...", flush=True)
        model, backend = export_for_default_runtime(Path(tmp))
        ours, ours_url = start_ours(model, backend, args.serve_args.split())
        tutorial, tutorial_url = start_tutorial()
        servers = {"mobilenets serve": (ours_url, "/v2/models/mnv3/classify"),
                   "tutorial FastAPI": (tutorial_url, "/predict")}
        try:
            for url, path in servers.values():  # first requests: lazy imports, allocations
                for img in images[:4]:
                    httpx.post(url + path, files={"file": ("i.jpg", img, "image/jpeg")}, timeout=120).raise_for_status()
            rows = []
            for clients in args.clients:
                for name, (url, path) in servers.items():
                    row = asyncio.run(load(url, path, images, clients, args.seconds, args.warmup, args.max_requests))
                    rows.append({"server": name, **row})
                    print(f"{name:18s} {clients:3d} clients: {row['throughput']:7.1f} req/s  p50 {row['p50_ms']} ms"
                          f"  p99 {row['p99_ms']} ms  errors {row['errors']}", flush=True)
        finally:
            codes = {"mobilenets serve": stop(ours), "tutorial FastAPI": stop(tutorial)}
    return {"machine": machine(), "model": "mobilenet_v3_large 1.0 (random weights), 224 x 224",
            "ours": {"backend": backend, "options": args.serve_args or "defaults"},
            "images": f"{IMAGES} JPEGs, 640 x 480",
            "settings": {"seconds": args.seconds, "warmup": args.warmup, "max_requests": args.max_requests},
            "rows": rows, "exit_codes": codes, "verdict": verdict(rows)}


def verdict(rows: list[dict]) -> dict:
    """Throughput ratio and p99 of ours vs the tutorial's at each level; the target at 32 clients."""
    out = {}
    for clients in sorted({r["clients"] for r in rows}):
        a = next(r for r in rows if r["clients"] == clients and r["server"] == "mobilenets serve")
        b = next(r for r in rows if r["clients"] == clients and r["server"] == "tutorial FastAPI")
        speedup = a["throughput"] / b["throughput"] if b["throughput"] else None
        out[str(clients)] = {"speedup": round(speedup, 2) if speedup else None,
                             "p99_ours_ms": a["p99_ms"], "p99_tutorial_ms": b["p99_ms"]}
    top = out.get("32")
    if top:
        top["target_met"] = bool(top["speedup"] and top["speedup"] >= TARGET_SPEEDUP
                                 and top["p99_ours_ms"] <= top["p99_tutorial_ms"])
    return out


def print_table(result: dict) -> None:
    print(f"\n{'server':18s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for r in result["rows"]:
        print(f"{r['server']:18s} {r['clients']:7d} {r['throughput']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['errors']:7d}")
    for clients, v in result["verdict"].items():
        print(f"{clients:>3s} clients: ours / tutorial throughput {v['speedup']}x, p99 {v['p99_ours_ms']} vs "
              f"{v['p99_tutorial_ms']} ms" + (f"  (target met: {v['target_met']})" if "target_met" in v else ""))


def machine() -> dict:
    from mobilenets.core.hardware import cpu_model
    from mobilenets.deploy.runtimes import available_backends
    have = available_backends()
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "load_average": os.getloadavg(), **{b: have.get(b) for b in ("torch", "onnxruntime", "openvino")}}


# --------------------------------------------------------------------------------------------
# soak


def png_claiming(width: int, height: int) -> bytes:
    """A little PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tensor_request(x: np.ndarray, name: str = "input") -> tuple[bytes, dict]:
    """A binary-tensor infer request body and its headers (as tritonclient builds it)."""
    import tritonclient.http as th
    t = th.InferInput(name, list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    body, size = th.InferenceServerClient.generate_request_body([t])
    return body, {"Inference-Header-Content-Length": str(size)}


def malformed(jpeg: bytes, res: int) -> list[tuple[str, str, bytes, dict]]:
    """(kind, path, body, headers) of the bad requests the soak mixes in."""
    wrong_shape, h = tensor_request(np.zeros((1, 3, res, res + 8), np.float32))
    return [("not an image", "/v2/models/mnv3/classify", b"GIF89a but not really" * 10, {}),
            ("truncated JPEG", "/v2/models/mnv3/classify", jpeg[: len(jpeg) // 2], {}),
            ("decompression bomb", "/v2/models/mnv3/classify", png_claiming(30000, 30000), {}),
            ("wrong shape", "/v2/models/mnv3/infer", wrong_shape, h),
            ("malformed JSON", "/v2/models/mnv3/infer", b'{"inputs": [{"name": "input", ', {}),
            ("unknown model", "/v2/models/resnet50/classify", jpeg, {}),
            ("over the size limit", "/v2/models/mnv3/classify", os.urandom(SOAK_BODY_MB * 2**20 + 1), {}),
            ("gzip bomb", "/v2/models/mnv3/infer", gzip.compress(b"\0" * (SOAK_BODY_MB * 2**20 * 4)),
             {"content-encoding": "gzip"})]


def soak(args) -> dict:
    from mobilenets.deploy.runtimes import open_session
    from mobilenets.serve.images import ImageInput
    images = make_images()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        print("exporting MobileNetV3-Large 1.0 ...", flush=True)
        model, backend = export_for_default_runtime(Path(tmp))
        session = open_session(model, backend, threads=1)
        pre = session.feed()
        to_input = ImageInput(pre)
        inputs = [to_input(img) for img in images]
        expected = [session.run(x)[0] for x in inputs]  # what each image's answer must be
        bad = malformed(images[0], pre.resolution)
        proc, url = start_ours(model, backend, ["--max-body-mb", str(SOAK_BODY_MB), *args.serve_args.split()])
        try:
            stats = asyncio.run(soak_load(url, proc.pid, images, inputs, expected, bad, args.soak))
        finally:
            stats["exit_code"] = stop(proc)
    return {"machine": machine(), "model": "mobilenet_v3_large 1.0 (random weights)", "backend": backend,
            "clients": SOAK_CLIENTS, "seconds": args.soak, **stats}


async def soak_load(url: str, pid: int, images, inputs, expected, bad, seconds: float) -> dict:
    import httpx
    start = time.monotonic()
    end, baseline_at = start + seconds, start + seconds / 10
    counts = {"good": 0, "bad": 0, "5xx": 0, "wrong": 0, "failed": 0}
    bad_codes: dict[str, dict[str, int]] = {}
    wrong_examples: list[str] = []
    rss = {"baseline_mb": None, "peak_mb": 0.0}
    timeline: list[tuple[float, float]] = []  # (seconds, MiB) every 5 s

    def check_classify(r, i: int) -> bool:
        top = r.json()["top"][0]
        e = expected[i]
        p = np.exp(e - e.max())
        p /= p.sum()
        return abs(top["prob"] - float(p[top["index"]])) < 1e-3 and p[top["index"]] >= p.max() - 1e-3

    def check_infer(r, i: int) -> bool:
        import tritonclient.http as th
        out = th.InferenceServerClient.parse_response_body(
            r.content, header_length=int(r.headers["inference-header-content-length"])).as_numpy("logits")[0]
        return np.allclose(out, expected[i], rtol=1e-3, atol=1e-3 * float(np.abs(expected[i]).max()))

    async def client(k: int, http: httpx.AsyncClient) -> None:
        n = k
        while time.monotonic() < end:
            n += SOAK_CLIENTS
            i = n % len(images)
            try:
                if n % 10 == 0:
                    kind, path, body, headers = bad[(n // 10) % len(bad)]
                    r = await http.post(path, content=body, headers=headers)
                    counts["bad"] += 1
                    bad_codes.setdefault(kind, {})
                    bad_codes[kind][str(r.status_code)] = bad_codes[kind].get(str(r.status_code), 0) + 1
                elif n % 2:
                    r = await http.post("/v2/models/mnv3/classify", content=images[i],
                                        headers={"content-type": "image/jpeg"})
                    counts["good"] += 1
                    ok = r.status_code == 200 and check_classify(r, i)
                else:
                    body, headers = tensor_request(inputs[i])
                    r = await http.post("/v2/models/mnv3/infer", content=body, headers=headers)
                    counts["good"] += 1
                    ok = r.status_code == 200 and check_infer(r, i)
            except httpx.HTTPError as exc:
                counts["failed"] += 1
                wrong_examples.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            if r.status_code >= 500:
                counts["5xx"] += 1
            if n % 10 and not ok:
                counts["wrong"] += 1
                if len(wrong_examples) < 10:
                    wrong_examples.append(f"{r.status_code} {r.text[:200]}")

    async def watch() -> None:
        while time.monotonic() < end:
            now = rss_mb(pid)
            rss["peak_mb"] = max(rss["peak_mb"], now)
            if rss["baseline_mb"] is None and time.monotonic() >= baseline_at:
                rss["baseline_mb"] = now
            if not timeline or time.monotonic() - start >= timeline[-1][0] + 5:
                timeline.append((round(time.monotonic() - start, 1), round(now, 1)))
            await asyncio.sleep(0.5)
        rss["end_mb"] = rss_mb(pid)

    limits = httpx.Limits(max_connections=SOAK_CLIENTS, max_keepalive_connections=SOAK_CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await asyncio.gather(watch(), *(client(k, http) for k in range(SOAK_CLIENTS)))
    growth = rss["end_mb"] - (rss["baseline_mb"] or rss["end_mb"])
    return {**counts, "requests_per_s": round((counts["good"] + counts["bad"]) / seconds, 1),
            "bad_request_codes": bad_codes, "examples": wrong_examples,
            "rss_mb": {k: round(v, 1) for k, v in rss.items()}, "rss_growth_mb": round(growth, 1),
            "rss_timeline": timeline,
            "passed": counts["5xx"] == 0 and counts["wrong"] == 0 and counts["failed"] == 0 and growth < 50}


def main() -> None:
    if sys.argv[1:2] == ["tutorial-server"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("--port", type=int, required=True)
        run_tutorial_server(ap.parse_args().port)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level and server")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    ap.add_argument("--max-requests", type=int, default=20000, help="most measured requests per level and server")
    ap.add_argument("--clients", type=int, nargs="+", default=list(LEVELS))
    ap.add_argument("--soak", type=float, default=None, help="run the soak for this many seconds instead")
    ap.add_argument("--serve-args", default="", help="extra options for `mobilenets serve` (e.g. '--workers 1')")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.soak:
        result = soak(args)
        out = args.out or RESULTS / "serve_soak.json"
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    else:
        result = benchmark(args)
        out = args.out or RESULTS / "serve_load.json"
        print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
