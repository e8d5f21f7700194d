"""``mobilenets serve``: a real server on a free loopback port, talked to with real clients
(``tritonclient[http]`` and httpx): metadata, infer in both tensor encodings, the image endpoint,
every bad input (each a 4xx with a JSON error, the server serving on), backpressure, timeouts,
dynamic batching, SIGTERM with requests in flight, and the Triton model repository export.

Answers are checked against ``open_session(...).run`` (and ``predict``) on the same input. Nothing
here is timed: the server's own runs are held back with a gate where a test needs requests to wait.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import importlib.util
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
th = pytest.importorskip("tritonclient.http")
pytest.importorskip("onnxruntime")

from conftest import spread_bn_and_head  # noqa: E402
from google.protobuf import json_format, text_format  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mobilenets.cli import app as cli  # noqa: E402
from mobilenets.deploy.export import export  # noqa: E402
from mobilenets.deploy.runtimes import open_session  # noqa: E402
from mobilenets.deploy.triton import export_triton  # noqa: E402
from mobilenets.models import build_model  # noqa: E402
from mobilenets.predict import predict  # noqa: E402
from mobilenets.serve import BatchPolicy, Limits, ServedModel, build_server, load_models  # noqa: E402
from mobilenets.serve.models import default_name  # noqa: E402
from mobilenets.weights import save_checkpoint  # noqa: E402

RES, CLASSES, BACKEND = 64, 10, "onnxruntime"
MAX_BODY = 2 * 2**20
MAX_PIXELS = 1_000_000
WAIT_S = 60  # the most any wait here lasts before the test fails (a hang guard, not a timing assertion)


def tiny_model():
    """MobileNetV3-Small 0.35 at 64 pixels, 10 classes, with BN statistics and a head that make its
    logits differ between classes (a fresh network's are all ~0)."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", width=0.35, resolution=RES, num_classes=CLASSES).eval()
    return spread_bn_and_head(model, mean=0.2, head_std=0.5)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    return export(tiny_model(), "onnx", out, batch="dynamic").path


@pytest.fixture(scope="module")
def reference(onnx_file):
    """The same file in a session of its own: what every answer must match."""
    return open_session(onnx_file, BACKEND)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A JPEG and a PNG photo-like enough to decode and resize (gradients and stripes)."""
    folder = tmp_path_factory.mktemp("images")
    yy, xx = np.mgrid[0:90, 0:120]
    rgb = np.stack([(xx * 2) % 255, (yy * 3) % 255, ((xx + yy) * 5) % 255], -1).astype(np.uint8)
    paths = {"jpeg": folder / "a.jpg", "png": folder / "b.png"}
    Image.fromarray(rgb).save(paths["jpeg"], quality=90)
    Image.fromarray(rgb[::-1]).save(paths["png"])
    return paths


@contextlib.contextmanager
def running(models: list[ServedModel], **limits):
    """A server of ``models`` on a free loopback port, in a thread; yields its URL."""
    lines: list[str] = []
    server = build_server(models, host="127.0.0.1", port=0, limits=Limits(**limits), announce=lines.append)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + WAIT_S
    while not lines and thread.is_alive() and time.monotonic() < end:
        time.sleep(0.02)
    assert lines, "the server did not start"
    url = re.search(r"http://\S+", lines[0]).group(0)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


@pytest.fixture(scope="module")
def server(onnx_file):
    models = load_models([f"tiny={onnx_file}"], backend=BACKEND, threads=1, policy=BatchPolicy(max_batch=8))
    with running(models, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, workers=1) as url:
        yield url


def triton(url: str) -> th.InferenceServerClient:
    return th.InferenceServerClient(url.removeprefix("http://"))


def infer_body(x: np.ndarray, *, binary: bool = True, name: str = "input", datatype: str = "FP32",
               outputs: list | None = None) -> tuple[bytes, dict]:
    """A request body as tritonclient builds it, and its headers."""
    tensor = th.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    body, json_size = th.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    return body, ({"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {})


def metric(url: str, name: str, **labels) -> float:
    """The value of one Prometheus series of the server (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(w in line for w in want):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(check, what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# the protocol, with tritonclient


def test_health_and_metadata_through_tritonclient(server):
    c = triton(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("tiny")
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data", "classification", "model_configuration"]
    meta = c.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, RES, RES]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}]
    pre = meta["parameters"]["preprocessing"]
    assert pre["resolution"] == RES and pre["mean"] == [0.485, 0.456, 0.406] and meta["versions"] == ["1"]
    assert c.get_model_metadata("tiny", "1")["name"] == "tiny"
    config = c.get_model_config("tiny")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [3, RES, RES]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert c.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY"}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_runtime_in_both_encodings(server, reference, binary):
    x = np.random.default_rng(1).standard_normal((3, 3, RES, RES)).astype(np.float32)
    tensor = th.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = triton(server).infer("tiny", [tensor], request_id="r1",
                                  outputs=[th.InferRequestedOutput("logits", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("logits"), reference.run(x), rtol=1e-4, atol=1e-4)
    assert result.get_response()["id"] == "r1"
    # the classification extension: top-k as "score:index:label", best first
    top = triton(server).infer("tiny", [tensor], outputs=[th.InferRequestedOutput("logits", class_count=3)])
    got = [[int(s.split(b":")[1]) for s in row] for row in top.as_numpy("logits")]
    assert got == np.argsort(-reference.run(x), axis=1)[:, :3].tolist()


def test_infer_with_compression_nested_json_and_a_version(server, reference):
    x = np.random.default_rng(2).standard_normal((1, 3, RES, RES)).astype(np.float32)
    tensor = th.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton(server).infer("tiny", [tensor], model_version="1", request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("logits"), reference.run(x), rtol=1e-4, atol=1e-4)
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]}
    reply = httpx.post(f"{server}/v2/models/tiny/versions/1/infer", json=doc)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    out = reply.json()["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [1, CLASSES]
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), reference.run(x), rtol=1e-4, atol=1e-4)


def test_classify_an_uploaded_image_as_predict_does(server, onnx_file, images):
    expected = predict(open_session(onnx_file, BACKEND), [images["jpeg"]], top=3).predictions[0].top
    raw = httpx.post(f"{server}/v2/models/tiny/classify?top=3", content=images["jpeg"].read_bytes(),
                     headers={"content-type": "image/jpeg"})
    form = httpx.post(f"{server}/v2/models/tiny/classify", params={"top": 3},
                      files={"image": ("a.jpg", images["jpeg"].read_bytes(), "image/jpeg")})
    for reply in (raw, form):
        assert reply.status_code == 200, reply.text
        top = reply.json()["top"]
        assert [t["index"] for t in top] == [t.index for t in expected]
        assert [t["label"] for t in top] == [t.label for t in expected]
        np.testing.assert_allclose([t["prob"] for t in top], [t.prob for t in expected], atol=1e-4)
    png = httpx.post(f"{server}/v2/models/tiny/classify", content=images["png"].read_bytes()).json()
    assert len(png["top"]) == 5 and png["model_name"] == "tiny"


# --------------------------------------------------------------------------------------------
# bad input: a 4xx naming the problem, and the server serves on


def png_claiming(width: int, height: int) -> bytes:
    """A valid little PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_requests(jpeg: bytes) -> dict[str, tuple[str, str, bytes, dict, int, str]]:
    """name -> (method path, ..., body, headers, expected status, a word the error must contain)."""
    x = np.zeros((1, 3, RES, RES), np.float32)
    wrong_shape, h1 = infer_body(np.zeros((1, 3, RES, RES + 1), np.float32))
    wrong_dtype, h2 = infer_body(x.astype(np.float64), datatype="FP64")
    wrong_name, h3 = infer_body(x, name="images")
    too_many, h4 = infer_body(np.zeros((9, 3, RES, RES), np.float32))
    good, h5 = infer_body(x)
    short = good[:-100]  # binary_data_size says more than the body has
    json_int = json.dumps({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 3, RES, RES],
                                       "data": [0] * (3 * RES * RES)}]}).encode()
    bad_output = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, RES, RES],
                                         "data": [0.0] * (3 * RES * RES)}], "outputs": [{"name": "probs"}]}).encode()
    ragged = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, RES, RES],
                                     "data": [[1.0], [1.0, 2.0]]}]}).encode()
    bomb_gzip = gzip.compress(b"\0" * (MAX_BODY * 8))
    infer, classify = "/v2/models/tiny/infer", "/v2/models/tiny/classify"
    return {
        "not an image": (classify, b"%PDF-1.4 this is not an image", {}, 415, "not an image"),
        "truncated JPEG": (classify, jpeg[: len(jpeg) // 2], {}, 422, "truncated"),
        "decompression bomb PNG 30000x30000": (classify, png_claiming(30000, 30000), {}, 413, "too large"),
        "PNG over the pixel limit": (classify, png_claiming(2000, 1000), {}, 413, "2000 x 1000"),
        "empty body": (classify, b"", {}, 400, "empty"),
        "multipart without a file": (classify, b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--b--\r\n',
                                     {"content-type": "multipart/form-data; boundary=b"}, 400, "no file"),
        "top is not a number": (classify + "?top=many", jpeg, {}, 400, "top"),
        "tensor of the wrong shape": (infer, wrong_shape, h1, 400, "shape"),
        "tensor of the wrong dtype (binary)": (infer, wrong_dtype, h2, 400, "FP32"),
        "tensor of the wrong dtype (JSON)": (infer, json_int, {}, 400, "FP32"),
        "unknown input name": (infer, wrong_name, h3, 400, "'images'"),
        "unknown output name": (infer, bad_output, {}, 400, "'probs'"),
        "more images than the largest batch": (infer, too_many, h4, 400, "at most 8"),
        "binary data cut short": (infer, short, h5, 400, "binary_data_size"),
        "ragged JSON data": (infer, ragged, {}, 400, "FP32 array"),
        "malformed JSON": (infer, b'{"inputs": [', {}, 400, "not valid JSON"),
        "JSON that is not an object": (infer, b"[1, 2]", {}, 400, "JSON object"),
        "header length past the body": (infer, b"{}", {"Inference-Header-Content-Length": "99"}, 400, "length"),
        "unknown model (infer)": ("/v2/models/resnet50/infer", good, h5, 404, "unknown model 'resnet50'"),
        "unknown model (classify)": ("/v2/models/resnet50/classify", jpeg, {}, 404, "unknown model"),
        "unknown version": ("/v2/models/tiny/versions/7/infer", good, h5, 404, "no version '7'"),
        "body over the size limit": (classify, b"\xff" * (MAX_BODY + 1), {}, 413, f"limit of {MAX_BODY}"),
        "gzip body that inflates over the limit": (infer, bomb_gzip, {"content-encoding": "gzip"}, 413, "inflates"),
        "unsupported content encoding": (infer, good, {"content-encoding": "br"}, 415, "'br'"),
    }


def test_every_bad_input_gets_a_json_4xx_and_the_server_serves_on(server, reference, images):
    jpeg = images["jpeg"].read_bytes()
    cases = bad_requests(jpeg)
    with httpx.Client(base_url=server) as client:
        for what, (path, body, headers, status, needle) in cases.items():
            reply = client.post(path, content=body, headers=headers)
            assert reply.status_code == status, f"{what}: {reply.status_code} {reply.text}"
            error = reply.json()["error"]
            assert needle in error, f"{what}: {error!r} does not say {needle!r}"
        assert client.get("/v2/nothing").status_code == 404 and "error" in client.get("/v2/nothing").json()
        assert client.get("/v2/models/tiny/infer").status_code == 405
        assert client.post("/v2/models/tiny/classify", content=jpeg).status_code == 200
    x = np.ones((2, 3, RES, RES), np.float32)
    tensor = th.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(triton(server).infer("tiny", [tensor]).as_numpy("logits"), reference.run(x),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(th.InferenceServerException, match="shape"):  # tritonclient raises the error it got
        bad = th.InferInput("input", [1, 3, RES, 2 * RES], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, RES, 2 * RES), np.float32))
        triton(server).infer("tiny", [bad])
    assert metric(server, "mobilenets_errors_total", model="tiny", code="415", kind="not_an_image") >= 1
    assert metric(server, "mobilenets_errors_total", model="_unknown", code="404") >= 1
    assert metric(server, "mobilenets_requests_total", model="tiny", endpoint="/v2/models/{model_name}/classify",
                  code="413") >= 2


def test_metrics_count_requests_latency_and_batches(server, images):
    before = metric(server, "mobilenets_requests_total", model="tiny", endpoint="/v2/models/{model_name}/classify",
                    code="200")
    httpx.post(f"{server}/v2/models/tiny/classify", content=images["png"].read_bytes()).raise_for_status()
    after = metric(server, "mobilenets_requests_total", model="tiny", endpoint="/v2/models/{model_name}/classify",
                   code="200")
    assert after == before + 1
    assert metric(server, "mobilenets_request_duration_seconds_count", model="tiny") >= 1
    assert metric(server, "mobilenets_batch_size_count", model="tiny") >= 1
    assert 'mobilenets_queue_depth{model="tiny"}' in httpx.get(f"{server}/metrics").text


# --------------------------------------------------------------------------------------------
# batching, backpressure and timeouts: the model's runs held back by a gate


class Gated:
    """A session whose runs wait until ``gate`` opens; ``entered`` is set when a run starts."""

    def __init__(self, session):
        self.session, self.gate, self.entered = session, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, x):
        self.entered.set()
        self.gate.wait(WAIT_S)
        return self.session.run(x)


def gated_model(onnx_file, policy: BatchPolicy) -> tuple[ServedModel, Gated]:
    model = load_models([f"tiny={onnx_file}"], backend=BACKEND, threads=1, policy=policy)[0]
    model.session = Gated(model.session)
    return model, model.session


def post_in_background(pool, url: str, x: np.ndarray):
    body, headers = infer_body(x)
    return pool.submit(httpx.post, f"{url}/v2/models/tiny/infer", content=body, headers=headers, timeout=WAIT_S)


def logits_of(reply) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    result = th.InferenceServerClient.parse_response_body(
        reply.content, header_length=int(reply.headers["inference-header-content-length"]))
    return result.as_numpy("logits")


def test_full_queue_answers_503_with_retry_after_and_queued_requests_batch(onnx_file, reference):
    model, gated = gated_model(onnx_file, BatchPolicy(max_batch=2, max_delay_s=0, max_queue=2))
    xs = [np.full((1, 3, RES, RES), i, np.float32) for i in range(4)]
    with running([model], workers=1) as url, concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = post_in_background(pool, url, xs[0])
        assert gated.entered.wait(WAIT_S)  # the first request's batch is running (held at the gate)
        queued = [post_in_background(pool, url, x) for x in xs[1:3]]
        wait_until(lambda: metric(url, "mobilenets_queue_depth", model="tiny") == 2, "two queued images")
        body, headers = infer_body(xs[3])
        refused = httpx.post(f"{url}/v2/models/tiny/infer", content=body, headers=headers)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "queue is full" in refused.json()["error"]
        gated.gate.set()
        for x, reply in zip(xs[:3], [first, *queued], strict=True):
            np.testing.assert_allclose(logits_of(reply.result()), reference.run(x), rtol=1e-4, atol=1e-4)
        # three requests in two runs: the two that waited went together
        assert metric(url, "mobilenets_batch_size_count", model="tiny") == 2
        assert metric(url, "mobilenets_batch_size_sum", model="tiny") == 3
        assert metric(url, "mobilenets_errors_total", model="tiny", code="503", kind="queue_full") == 1


def test_more_requests_than_max_requests_get_503(onnx_file, reference):
    model, gated = gated_model(onnx_file, BatchPolicy(max_batch=4, max_delay_s=0))
    x = np.ones((1, 3, RES, RES), np.float32)
    with running([model], max_requests=1, workers=1) as url, concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = post_in_background(pool, url, x)
        assert gated.entered.wait(WAIT_S)
        body, headers = infer_body(x)
        busy = httpx.post(f"{url}/v2/models/tiny/infer", content=body, headers=headers)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "retry later" in busy.json()["error"]
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # health is not a model request
        gated.gate.set()
        np.testing.assert_allclose(logits_of(held.result()), reference.run(x), rtol=1e-4, atol=1e-4)


def test_a_failing_runtime_is_a_json_500_and_the_server_serves_on(onnx_file, images):
    model = load_models([f"tiny={onnx_file}"], backend=BACKEND, threads=1)[0]

    class Failing(Gated):
        def run(self, x):
            if np.isnan(x).any():
                raise RuntimeError("the runtime gave up")
            return self.session.run(x)

    model.session = Failing(model.session)
    with running([model], workers=1) as url:
        body, headers = infer_body(np.full((1, 3, RES, RES), np.nan, np.float32))
        failed = httpx.post(f"{url}/v2/models/tiny/infer", content=body, headers=headers)
        assert failed.status_code == 500 and "the runtime gave up" in failed.json()["error"]
        assert httpx.post(f"{url}/v2/models/tiny/classify", content=images["jpeg"].read_bytes()).status_code == 200
        assert metric(url, "mobilenets_errors_total", model="tiny", code="500", kind="internal") == 1


def test_a_request_past_its_timeout_gets_504_and_the_server_serves_on(onnx_file, reference):
    model, gated = gated_model(onnx_file, BatchPolicy(max_batch=4, max_delay_s=0))
    x = np.ones((1, 3, RES, RES), np.float32)
    body, headers = infer_body(x)
    with running([model], timeout_s=0.5, workers=1) as url:
        late = httpx.post(f"{url}/v2/models/tiny/infer", content=body, headers=headers, timeout=WAIT_S)
        assert late.status_code == 504 and "timeout of 0.5 s" in late.json()["error"]
        gated.gate.set()
        np.testing.assert_allclose(logits_of(httpx.post(f"{url}/v2/models/tiny/infer", content=body,
                                                        headers=headers)), reference.run(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# the command: SIGTERM with requests in flight, one-line errors


def test_sigterm_finishes_every_request_in_flight_then_exits_0(onnx_file, reference):
    # batches wait up to ten minutes to fill: only the drain on SIGTERM runs these requests soon
    cmd = [sys.executable, "-m", "mobilenets", "serve", f"tiny={onnx_file}", "--port", "0", "--backend", BACKEND,
           "--max-batch", "64", "--max-queue", "64", "--max-delay-ms", "600000", "--threads", "1", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[-1]
        xs = [np.full((1, 3, RES, RES), i / 8, np.float32) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = [post_in_background(pool, url, x) for x in xs]
            wait_until(lambda: metric(url, "mobilenets_queue_depth", model="tiny") == 8, "8 requests queued")
            proc.send_signal(signal.SIGTERM)
            for x, reply in zip(xs, replies, strict=True):
                np.testing.assert_allclose(logits_of(reply.result()), reference.run(x), rtol=1e-4, atol=1e-4)
        assert proc.wait(WAIT_S) == 0, proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/v2/health/live")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def one_line_error(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in result.output


def test_serve_command_errors_are_one_line(onnx_file, tmp_path):
    one_line_error(["serve", str(tmp_path / "missing.onnx")], "no such model file")
    one_line_error(["serve", f"a={onnx_file}", f"a={onnx_file}"], "two models are named 'a'")
    one_line_error(["serve", str(onnx_file), "--max-batch", "8", "--max-queue", "4"], "at least one batch")
    one_line_error(["serve", f"bad name={onnx_file}"], "no such model file")
    one_line_error(["serve", str(onnx_file), "--backend", "tensorflow"], "unknown backend 'tensorflow'")


# --------------------------------------------------------------------------------------------
# scale out: a Triton model repository


def triton_model_config():
    """Triton's own ``ModelConfig`` message (shipped in tritonclient's wheel), to parse config.pbtxt with."""
    import tritonclient
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig()


def test_export_triton_writes_a_repository_triton_can_read(tmp_path, reference):
    model = tmp_path / "tiny.safetensors"
    save_checkpoint(model, tiny_model())
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["export", str(model), "--format", "triton", "--triton-backend", "openvino",
                                      "-o", str(repo), "--triton-name", "tiny", "--triton-max-batch", "16", "--json"])
    assert result.exit_code == 0, result.output
    folder = repo / "tiny"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1", "1/model.bin", "1/model.json", "1/model.xml", "config.pbtxt", "labels.txt"]
    config = json_format.MessageToDict(text_format.Parse((folder / "config.pbtxt").read_text(),
                                                         triton_model_config()), preserving_proto_field_name=True)
    assert config["backend"] == "openvino" and config["max_batch_size"] == 16
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["3", str(RES), str(RES)]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [str(CLASSES)],
                                 "label_filename": "labels.txt"}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "2000"}
    assert (folder / "labels.txt").read_text().splitlines() == [str(i) for i in range(CLASSES)]
    assert json.loads(result.stdout)["model_dir"] == str(folder)
    # the file takes any batch (Triton batches it) and answers as the ONNX export does
    x = np.random.default_rng(3).standard_normal((5, 3, RES, RES)).astype(np.float32)
    np.testing.assert_allclose(open_session(folder / "1" / "model.xml").run(x), reference.run(x), rtol=1e-3,
                               atol=1e-3)
    assert default_name(str(folder / "1" / "model.xml")) == "tiny"  # served under its Triton name
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folder left
    onnx = export_triton(model, repo, verify=False)  # the default: ONNX Runtime's backend, named after the model
    assert onnx.name == f"mobilenet_v3_small-w0.35-r{RES}" and onnx.config["backend"] == "onnxruntime"
    assert (onnx.model_dir / "1" / "model.onnx").is_file() and (repo / "tiny" / "config.pbtxt").is_file()
    one_line_error(["export", str(model), "--format", "triton", "-o", str(repo), "--triton-backend", "tensorrt"],
                   "unknown Triton backend 'tensorrt'")
    one_line_error(["export", str(model), "--format", "triton", "-o", str(repo), "--nhwc"], "--nhwc")
