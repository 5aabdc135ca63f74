"""`deepfake export --format onnx` and `deepfake serve`: ONNX Runtime parity, the HTTP API on loopback (good images,
every kind of bad upload, batching under concurrent requests, Grad-CAM), and the page in a real browser."""

import base64
import io
import json
import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from PIL import Image

from deepfake_lightning import __version__
from deepfake_lightning.api import datamodule_for, load_detector, predict_split
from deepfake_lightning.cli import main
from deepfake_lightning.commands.export import export_main
from deepfake_lightning.data.dataset import load_image
from deepfake_lightning.errors import ExportError
from deepfake_lightning.export import load_onnx
from deepfake_lightning.files import file_sha256
from deepfake_lightning.provenance import DEMO_WARNING
from deepfake_lightning.serving.process import ServerProcess
from deepfake_lightning.serving.server import build_server
from deepfake_lightning.serving.worker import DetectorAPI, Engine
from tests.helpers import best_checkpoint
from tests.test_evidence import _certificates, _sign
from tests.test_export import _refuse_unpickling


@pytest.fixture(scope="module")
def demo_run(quick_run):
    """The session's quick run (conftest's ``quick_run``): this module checks formats, errors, options and parity
    between commands, not what a model learned."""
    return quick_run


ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DEEPFAKE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# The PyTorch server runs on the GPU when there is one (--accelerator auto) and `reference` on the CPU: CUDA's
# convolutions use TF32 by default, a few 1e-4 on a probability (measured 3.2e-4 on an H200), not a wrong answer.
TORCH_SERVER_TOLERANCE = 2e-3 if torch.cuda.is_available() else 1e-6


@pytest.fixture(scope="module")
def export(demo_run, tmp_path_factory) -> Path:
    """The demo model exported as the README says: safetensors and ONNX."""
    ckpt = best_checkpoint(demo_run)
    return export_main(
        [
            "--ckpt_path",
            str(ckpt),
            "--out",
            str(tmp_path_factory.mktemp("serve") / "demo_v1"),
            "--format",
            "safetensors",
            "onnx",
        ]
    )


@pytest.fixture(scope="module")
def servers(export):
    """Two servers started side by side: PyTorch with batching (up to 8 requests, 50 ms to fill up) and a 1 MB
    upload limit, and ONNX Runtime with batching off in two worker processes."""
    batched = ServerProcess(
        [
            "--ckpt_path",
            str(export),
            "--max_batch_size",
            "8",
            "--batch_timeout",
            "0.05",
            "--max_upload_mb",
            "1",
            "--log_level",
            "warning",
        ]
    ).start()
    onnx = ServerProcess(
        [
            "--ckpt_path",
            str(export),
            "--runtime",
            "onnx",
            "--max_batch_size",
            "1",
            "--workers_per_device",
            "2",
            "--log_level",
            "warning",
        ]
    ).start()
    try:
        yield {"batched": batched.wait_ready(), "onnx": onnx.wait_ready()}
    finally:
        batched.close()
        onnx.close()


@pytest.fixture(scope="module")
def http(export):
    """The PyTorch server with batching (up to 8 requests, 50 ms to fill up) and a 1 MB upload limit, answered in this
    process through Starlette's TestClient (its inference worker is a process, as under `deepfake serve`)."""
    yield from _in_process(build_server(export, max_batch_size=8, batch_timeout=0.05, max_upload_mb=1))


@pytest.fixture(scope="module")
def onnx_http(export):
    """ONNX Runtime with batching off, in two worker processes, answered in this process."""
    yield from _in_process(build_server(export, runtime="onnx", max_batch_size=1, workers_per_device=2))


def _in_process(server):
    from litserve.utils import wrap_litserve_start
    from starlette.testclient import TestClient

    with wrap_litserve_start(server) as started, TestClient(started.app) as client:
        yield client


@pytest.fixture(scope="module")
def images(demo_root) -> list[tuple[str, bytes]]:
    """(name, bytes) of 40 of the demo's test_v1 images."""
    ids = pd.read_csv(demo_root / "test_v1.csv")["id"][:40]
    return [(Path(i).name, (demo_root / i).read_bytes()) for i in ids]


@pytest.fixture(scope="module")
def reference(export, images) -> dict[str, float]:
    """Calibrated AI probabilities of the same images by the PyTorch detector in this process."""
    detector = load_detector(export)
    batch = torch.stack([detector.transform(load_image(io.BytesIO(data))) for _, data in images])
    with torch.inference_mode():
        probs = detector.model.calibrated_probs(detector.model.predict_logits(batch))
    return {name: float(p) for (name, _), p in zip(images, probs, strict=False)}


@pytest.fixture(scope="module")
def signed(images, tmp_path_factory) -> tuple[str, bytes, bytes, Path]:
    """(name, bytes) of a demo image C2PA-signed as trainedAlgorithmicMedia with a self-signed test certificate, the
    same image unsigned, and the PEM of the root that signed it."""
    import c2pa

    d = tmp_path_factory.mktemp("signed")
    chain, key, root = _certificates()
    (d / "root.pem").write_bytes(root)
    name, data = images[1]
    (d / name).write_bytes(data)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg="es256", sign_cert=chain, private_key=key, ta_url=None))
    _sign(d / name, d / f"signed_{name}", signer, "trainedAlgorithmicMedia")
    return f"signed_{name}", (d / f"signed_{name}").read_bytes(), data, d / "root.pem"


@pytest.mark.slow
def test_every_answer_carries_the_evidence_beside_an_unchanged_verdict(http, signed, export):
    name, data, unsigned, root = signed
    with_credentials, plain = _post(http, data).json(), _post(http, unsigned).json()
    assert with_credentials["evidence"] == {
        "c2pa": "unverified",  # this server trusts no signer
        "source_type": "trainedAlgorithmicMedia",
        "generator": "",
        "camera": "",
        "summary": "C2PA unverified claiming trainedAlgorithmicMedia, signed by dl tests "
        "(signer not in the trust list)",
    }
    assert plain["evidence"]["summary"] == "no provenance metadata"
    assert with_credentials["prob_ai"] == plain["prob_ai"]  # the same pixels: the manifest changes nothing
    from deepfake_lightning.evidence import load_trust_anchors

    trusting = Engine(str(export), trust_anchors=load_trust_anchors(root, "--trust_anchors"))
    assert trusting.decode(data, name).evidence["c2pa"] == "valid"  # `deepfake serve --trust_anchors root.pem`


def _post(http, data: bytes, content_type: str = "image/jpeg", explain: bool = False):
    """POST /predict through a TestClient, or through `requests` to a served URL."""
    params, headers = ({"explain": "true"} if explain else None), {"Content-Type": content_type}
    if isinstance(http, str):
        return requests.post(f"{http}/predict", params=params, data=data, headers=headers, timeout=60)
    return http.post("/predict", params=params, content=data, headers=headers)


# --------------------------------------------------------------------------- ONNX export
def test_onnx_export_matches_pytorch_on_the_demo_test_split(export, demo_root):
    config = json.loads((export / "detector.json").read_text())
    assert config["formats"] == ["safetensors", "onnx"]
    assert config["onnx"]["sha256"] == file_sha256(export / "model.onnx")
    assert config["onnx"]["input_shape"][0] == "batch"
    detector = load_detector(export)
    dm = datamodule_for(export, root=str(demo_root))
    torch_table = predict_split(detector, dm, "test_v1", batch_size=16)
    onnx = load_onnx(export)
    loader = torch.utils.data.DataLoader(dm.dataset("test_v1"), batch_size=7)  # another batch size: dynamic axis
    logits = np.concatenate([onnx.logits(batch["image"]) for batch in loader])
    probs = detector.probs(logits)
    assert len(probs) == len(torch_table) == len(pd.read_csv(demo_root / "test_v1.csv")) > 100
    assert np.abs(probs - torch_table["prob_ai"].to_numpy()).max() < 1e-4
    assert np.abs(logits - torch_table["logit"].to_numpy()).max() < 1e-3
    # Same verdicts, except for an image within 1e-4 of the threshold.
    clear = np.abs(torch_table["prob_ai"].to_numpy() - detector.threshold) > 1e-4
    assert ((probs >= detector.threshold) == torch_table["pred"].astype(bool))[clear].all()


def test_broken_or_mismatched_onnx_files_are_clear_errors(export, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    copy = Path(shutil.copytree(export, tmp_path / "copy"))
    config_path = copy / "detector.json"
    config = json.loads(config_path.read_text())

    (copy / "model.onnx").write_bytes(b"\x08\x07garbage")  # damaged or replaced: not the file detector.json lists
    with pytest.raises(ExportError, match=r"model.onnx is not the ONNX model detector.json was written with"):
        load_onnx(copy)
    config["onnx"]["sha256"] = file_sha256(copy / "model.onnx")  # ...even when its checksum was updated
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"model.onnx: ONNX Runtime cannot load it"):
        load_onnx(copy)

    # A valid ONNX model of another input size (another export's): refused with both shapes named.
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["logit"], axes=[1, 2, 3], keepdims=0)],
        "other",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"])],
    )
    # IR version 8 (opset 17's): onnx's default is its newest, which an older ONNX Runtime refuses to load at all
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(other, copy / "model.onnx")
    config["onnx"]["sha256"] = file_sha256(copy / "model.onnx")
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"does not fit .*detector.json: expected one input \(batch, 3, 64, 64\)"):
        load_onnx(copy)

    config["onnx"] = None  # an export without ONNX: --runtime onnx says how to write one
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"has no ONNX model; write one with: deepfake export .*--format"):
        Engine(str(copy), "onnx")


@pytest.mark.slow
def test_onnx_only_export_serves_with_onnx_runtime_and_says_so_elsewhere(
    demo_run, demo_root, tmp_path, monkeypatch, capsys
):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "onnx_only"), "--format", "onnx"])
    assert "model.onnx" in capsys.readouterr().out
    assert not (tmp_path / "onnx_only" / "model.safetensors").exists()
    with pytest.raises(ExportError, match=r"holds only onnx weights.*deepfake serve --runtime onnx"):
        load_detector(tmp_path / "onnx_only")
    _refuse_unpickling(monkeypatch)  # an export is served without unpickling anything, on either runtime
    api = DetectorAPI(str(tmp_path / "onnx_only"), "onnx")
    api.setup("cpu")
    assert api.engine.info()["model"] == "test_resnet" and api.engine.info()["explain"] is False
    image = base64.b64encode((demo_root / pd.read_csv(demo_root / "test_v1.csv")["id"][0]).read_bytes()).decode()
    plain, explained = api.predict(
        [api.decode_request({"image": image}), api.decode_request({"image": image, "explain": True})]
    )
    assert 0 <= plain["prob_ai"] <= 1 and plain["batch_size"] == 1  # the verdict; explaining is what fails
    response = api.encode_response(explained)
    assert response.status_code == 422 and json.loads(response.body)["error"] == "explain_unavailable"
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "x"), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_workers_run_every_batch_shape_before_serving_on_a_gpu(export, monkeypatch):
    """On CUDA the first pass at each batch size chooses kernels (p99 latency of 1 to 1.5 s on an H200 before this
    warm-up): a worker runs every size up to --max_batch_size before it answers; on a CPU one pass is enough."""
    engine = Engine(str(export), "torch")
    shapes = []
    monkeypatch.setattr(engine, "logits", lambda images: shapes.append(tuple(images.shape)))
    size = engine.img_size
    assert engine.warm_up(4) == [1] and shapes == [(1, 3, size, size)]
    engine.device, shapes[:] = "cuda:0", []
    assert engine.warm_up(4) == [1, 2, 3, 4] and shapes == [(n, 3, size, size) for n in (1, 2, 3, 4)]
    asked = []
    monkeypatch.setattr(Engine, "warm_up", lambda self, n: asked.append(n))
    DetectorAPI(str(export), "torch", max_batch_size=6).setup("cpu")
    assert asked == [6]


def test_engines_load_an_export_without_unpickling(export, demo_run, monkeypatch):
    ckpt = Engine(str(demo_run / "checkpoints" / "last.ckpt"), "torch")  # a .ckpt (a pickle) is served by PyTorch
    assert ckpt.info()["model"] == "test_resnet" and ckpt.info()["source"] == "last.ckpt"
    _refuse_unpickling(monkeypatch)
    for runtime in ("torch", "onnx"):
        info = Engine(str(export), runtime).info()
        assert (info["runtime"], info["explain"], info["source"]) == (runtime, True, "demo_v1")
        assert info["warning"] == DEMO_WARNING  # trained on the demo data: the page says so


# --------------------------------------------------------------------------- the API
def test_predict_returns_the_calibrated_verdict_raw_and_multipart(http, images, reference, export):
    config = json.loads((export / "detector.json").read_text())
    for name, data in images[:3]:
        raw = _post(http, data)
        form = http.post("/predict", files={"file": (name, data, "image/jpeg")})
        for response in (raw, form):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["prob_ai"] == pytest.approx(reference[name], abs=TORCH_SERVER_TOLERANCE)
            assert body["label"] == int(body["prob_ai"] >= config["threshold"])
            assert body["verdict"] == ("ai" if body["label"] else "human")
            assert body["threshold"] == config["threshold"] and body["model"] == "test_resnet"
            assert body["version"] == __version__ and body["runtime"] == "torch"
            assert "gradcam_png" not in body
        assert form.json()["filename"] == name
    info = http.get("/info").json()["model"]
    assert info["model"] == "test_resnet" and info["threshold"] == config["threshold"]


def _png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_explain_adds_a_gradcam_overlay(http, images):
    name, data = images[0]
    body = _post(http, data, explain=True).json()
    figure = _png(body["gradcam_png"])
    # the figure of `deepfake explain` (explain/figures.py): the whole image and the map side by side, titled
    assert figure.format == "PNG" and figure.width > 1.5 * figure.height >= 300
    pixels = np.asarray(figure.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 5  # a heat map over a picture, not a blank image
    form = http.post("/predict", files={"file": (name, data)}, data={"explain": "true"})
    assert "gradcam_png" in form.json()
    assert "gradcam_png" not in _post(http, data, explain=False).json()


def test_map_returns_every_tile_with_its_calibrated_probability(http, images, export, demo_root):
    name, data = images[0]
    body = http.post("/predict", params={"map": "true"}, content=data, headers={"Content-Type": "image/jpeg"}).json()
    form = http.post("/predict", files={"file": (name, data)}, data={"map": "true"}).json()
    assert body["map"] == form["map"] and "map" not in _post(http, data).json()
    tiles = body["map"]["tiles"]
    assert (body["map"]["width"], body["map"]["height"]) == (96, 96)
    # the demo config's stride 32 on 96 px with 64-px tiles: x, y in {0, 32}
    assert sorted((t["x"], t["y"]) for t in tiles) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    detector = load_detector(export)
    picture = load_image(io.BytesIO(data))
    for t in tiles:
        crop = detector.transform(picture.crop((t["x"], t["y"], t["x"] + 64, t["y"] + 64)))
        with torch.inference_mode():
            expected = float(detector.model.calibrated_probs(detector.model.predict_logits(crop[None]))[0])
        assert t["size"] == 64 and t["prob_ai"] == pytest.approx(expected, abs=TORCH_SERVER_TOLERANCE)
    assert not body.get("n_tiles")  # the verdict stays the centre crop's: this model was calibrated on it
    engine = Engine(str(export))
    engine.tiler, engine.mode = None, "resize"  # as for a resize-mode model
    refused = engine.decode(data, name, score_map=True)
    assert refused.status == 422 and refused.code == "map_unavailable" and "crop-mode" in refused.detail


def _bad_uploads(images) -> dict[str, tuple[bytes, str, int, str]]:
    """name -> (body, content type, expected status, expected error code)."""
    good = images[0][1]
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 megapixels in 17 kB
    return {
        "text": (b"this is not an image", "image/jpeg", 400, "not_an_image"),
        "truncated": (good[: len(good) // 2], "image/jpeg", 400, "corrupt_image"),
        "bomb": (bomb.getvalue(), "image/png", 400, "decompression_bomb"),
        "too_large": (os.urandom(int(1.5 * 2**20)), "image/jpeg", 413, "too_large"),
        "json": (b'{"image": "x"}', "application/json", 415, "unsupported_media_type"),
        "empty": (b"", "image/png", 400, "empty_upload"),
    }


def test_bad_uploads_get_a_4xx_json_error_and_the_server_keeps_serving(http, images, reference):
    for kind, (body, content_type, status, code) in _bad_uploads(images).items():
        response = _post(http, body, content_type)
        assert response.status_code == status, (kind, response.text)
        assert response.json()["error"] == code, kind
        assert response.json()["detail"], kind
    assert "1 MB (deepfake serve --max_upload_mb)" in _post(http, os.urandom(2 * 2**20)).json()["detail"]

    def streamed():  # no Content-Length: the limit is enforced while reading
        yield from (os.urandom(2**18) for _ in range(6))

    unsized = http.post("/predict", content=streamed(), headers={"Content-Type": "image/jpeg"})
    assert unsized.status_code == 413 and unsized.json()["detail"].startswith("upload is over")
    no_file = http.post("/predict", data={"explain": "true"}, files={"x": ("", b"")})
    assert no_file.status_code == 400 and no_file.json()["error"] == "no_file"
    garbled = _post(http, b"garbage", "multipart/form-data; boundary=xyz")
    two_files = http.post("/predict", files={"a": ("a.jpg", images[0][1]), "b": ("b.jpg", images[1][1])})
    for response in (garbled, two_files):
        assert response.status_code == 400 and response.json()["error"] == "bad_multipart", response.text
        assert response.headers["content-type"] == "application/json"
    name, data = images[1]
    # raw bytes of unknown type (curl --data-binary without -H) are decoded like any upload
    for content_type in ("application/octet-stream", "application/x-www-form-urlencoded", "image/webp"):
        answer = _post(http, data, content_type).json()
        assert answer["prob_ai"] == pytest.approx(reference[name], abs=TORCH_SERVER_TOLERANCE), content_type


def test_concurrent_requests_form_batches_and_bad_ones_fail_alone(http, images, reference):
    bad = _bad_uploads(images)
    jobs = [(name, data, "image/jpeg") for name, data in images[:24]]
    jobs[3::4] = [
        (kind, bad[kind][0], bad[kind][1]) for kind in ("text", "truncated", "bomb", "text", "truncated", "bomb")
    ]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda job: _post(http, job[1], job[2]), jobs))
    sizes = []
    for (name, _, _), response in zip(jobs, responses, strict=False):
        if name in bad:
            assert response.status_code == 400 and response.json()["error"] == bad[name][3]
            continue
        assert response.status_code == 200, response.text
        # the right answer to each
        assert response.json()["prob_ai"] == pytest.approx(reference[name], abs=TORCH_SERVER_TOLERANCE)
        sizes.append(response.json()["batch_size"])
    assert len(sizes) == 18 and max(sizes) > 1  # batches formed, bad uploads in them or not


@pytest.mark.slow
def test_onnx_runtime_without_batching(onnx_http, images, reference):
    http = onnx_http
    assert http.get("/info").json()["server"]["workers_per_device"] == 2
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda item: _post(http, item[1]), images[:12]))
    for (name, _), response in zip(images, responses, strict=False):
        body = response.json()
        assert body["runtime"] == "onnx" and body["batch_size"] == 1
        assert body["prob_ai"] == pytest.approx(reference[name], abs=1e-4)
    explained = _post(http, images[0][1], explain=True).json()  # Grad-CAM from the export's PyTorch weights
    assert _png(explained["gradcam_png"]).width > 300
    assert _post(http, b"GIF89a-not-really", "image/gif").json()["error"] == "not_an_image"


def test_the_page_is_one_offline_file(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'type="file"' in html and "/predict?explain=" in html
    assert "http://" not in html and "https://" not in html and "<link" not in html  # nothing fetched from elsewhere


def test_serve_command_errors(export, tmp_path, demo_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--ckpt_path", str(tmp_path / "missing")])
    assert e.value.code == 2 and "no such checkpoint file or export folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a file that is not a checkpoint
        main(["serve", "--ckpt_path", str(export / "detector.json"), "--port", "0"])
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit):
        main(["serve", "--ckpt_path", str(ckpt), "--runtime", "onnx", "--port", "0"])
    assert "--runtime onnx runs an export folder with a model.onnx" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit):
            main(["serve", "--ckpt_path", str(export), "--port", str(taken.getsockname()[1])])
    assert "is in use: choose another --port" in capsys.readouterr().err


# --------------------------------------------------------------------------- the page, in Chromium
def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian's chromium package, which .ci/run installs)")
def test_the_page_in_a_real_browser(servers, images, demo_root, tmp_path, signed):
    from playwright.sync_api import sync_playwright

    name, data = images[0]
    (tmp_path / name).write_bytes(data)
    (tmp_path / signed[0]).write_bytes(signed[1])
    (tmp_path / "notes.txt").write_text("not an image")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(servers["batched"].url + "/")
            page.wait_for_function(
                "document.querySelector('#model').textContent.includes('test_resnet')", timeout=15_000
            )  # the header, from GET /info
            warning = page.locator("#warning").inner_text()  # a demo model says it is not a real detector
            page.set_input_files(
                "#files", [str(tmp_path / name), str(tmp_path / signed[0]), str(tmp_path / "notes.txt")]
            )
            card = page.locator(f'.card[data-file="{name}"]')
            card.locator("img.gradcam").wait_for(timeout=30_000)
            card.locator("canvas.map").wait_for(timeout=30_000)
            drawn = card.locator("canvas.map").evaluate(
                "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " let red = 0; for (let i = 0; i < d.length; i += 4) red += d[i]; return [c.width, c.height, red]; }"
            )
            map_caption = card.locator("canvas.map + figcaption").inner_text()
            stability_line = card.locator(".stability").inner_text()
            page.locator('.card[data-file="notes.txt"] .error').wait_for(timeout=30_000)
            verdict = card.locator(".verdict").inner_text()
            overlay = card.locator("img.gradcam").evaluate("img => [img.complete, img.naturalWidth]")
            error = page.locator('.card[data-file="notes.txt"] .error').inner_text()
            badge = page.locator(f'.card[data-file="{signed[0]}"] .verdict .badge')
            badge.wait_for(timeout=30_000)
            badge_text, badge_class = badge.inner_text(), badge.get_attribute("class")
            badge_title = badge.get_attribute("title")
            plain_badges = card.locator(".badge").count()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        finally:
            browser.close()
    body = requests.post(
        f"{servers['batched'].url}/predict", params={"stability": 8}, data=data, timeout=60
    ).json()  # as the page asks: with the stability check on
    leaning = "AI-generated" if body["label"] else "Human-made"
    leans = "AI-generated" if body["label"] else "human-made"
    assert verdict == (f"Uncertain (leans {leans})" if body["verdict"] == "uncertain" else leaning)
    assert stability_line.startswith("re-shared 8 times: P(AI)")
    assert overlay[0] is True and overlay[1] > 300  # the labelled figure (whole image, map, colour bar)
    assert drawn[:2] == [320, 320] and drawn[2] > 0  # the image with its tiles painted over it
    assert map_caption.startswith("score map: 4 tiles")
    assert error.startswith("400: notes.txt: not an image")
    assert badge_text == "C2PA unverified: trainedAlgorithmicMedia" and "claims-ai" in badge_class
    assert badge_title.startswith("C2PA unverified claiming trainedAlgorithmicMedia")
    assert plain_badges == 0  # a file without provenance metadata gets no badge
    assert warning == f"Warning: {DEMO_WARNING}."
    assert Image.open(ARTIFACTS / "serve_page.png").size[0] == 1000


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "kill"])
def test_ctrl_c_or_kill_stops_the_server_and_its_workers(servers, how):
    """Last in this file: Ctrl+C in its terminal (SIGINT to the process group) stops the ONNX server (two workers);
    `kill PID` (SIGTERM to the command alone) stops the PyTorch one. `kill` used to end the command alone: its API
    processes and worker went on answering on the port."""
    import subprocess
    import time

    if how == "ctrl_c":
        server = servers["onnx"]
        assert server.interrupt() == 0
    else:
        server = servers["batched"]
        assert str(server.process.pid) in server.log  # the start-up line names the PID to kill
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    deadline = time.monotonic() + 20  # the workers end after the command, within seconds
    while (
        left := subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True, text=True).stdout
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == "", f"processes left in the server's group 20 s after the command ended: {left}"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=5)
    assert "Traceback" not in server.log, server.log[-3000:]  # it stops quietly, as cleanly as it stops


def test_stability_answers_a_three_way_verdict_and_refuses_a_bad_count(http, images, reference):
    name, data = images[2]
    headers = {"Content-Type": "image/jpeg"}
    body = http.post("/predict", params={"stability": "4"}, content=data, headers=headers).json()
    st = body["stability"]
    assert st["copies"] == 4 and st["tolerance"] == 0.25
    assert st["prob_min"] <= body["prob_ai"] <= st["prob_max"]
    assert body["prob_ai"] == pytest.approx(reference[name], abs=TORCH_SERVER_TOLERANCE)  # the image's own
    flipped = st["flip_rate"] > st["tolerance"]
    assert body["verdict"] == ("uncertain" if flipped else "ai" if body["label"] else "human")
    again = http.post("/predict", params={"stability": "4"}, content=data, headers=headers).json()
    assert again["stability"] == st  # seeded copies: the same answer twice
    for bad in ("abc", "-1", "33"):
        refused = http.post("/predict", params={"stability": bad}, content=data, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"] == "bad_stability", bad
