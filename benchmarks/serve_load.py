"""Benchmark: `deepfake serve` under load on loopback, against `deepfake predict` on the same images and model.

For each model (the demo's tiny ``test_resnet`` at 64 px and ``convnext_tiny`` at 224 px, random weights: speed
does not depend on them), exported with ``--format safetensors onnx``, and each runtime (``torch``, ``onnx``) and
batching setting (on: the defaults, up to 16 requests per forward pass with a 10 ms wait; off:
``--max_batch_size 1``), one server is started and C concurrent clients (1, 8, 32) send raw JPEG uploads:

* a clean run of ``--requests`` requests: throughput (answers/s), p50/p99 latency, errors;
* a mixed run where every 10th request is a bad upload (not an image, truncated, a decompression bomb, in turn):
  errors among the good requests (must be 0) and bad uploads answered 4xx.

Memory is the server's (API process, inference worker and the command: their proportional set sizes summed from
/proc) after start-up and after the runs. Bounded: ``--requests`` per run and ``--time_limit`` seconds per run (the
run stops sending when it passes). The client threads share the machine's cores with the server.

    python benchmarks/serve_load.py [--models demo convnext] [--requests N]
    python benchmarks/serve_load.py --models convnext --parts load --runtimes torch --batching on --clients 8 32

Also (``--parts runtimes``) the network alone, batch 1 and 16, on PyTorch and ONNX Runtime. Prints the tables
and writes benchmarks/results/serve_load.csv, serve_load_baseline.csv and serve_runtimes.csv.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests
import torch
from _images import write_random_jpegs  # benchmarks/_images.py, beside this script
from _results import publish  # benchmarks/_results.py, beside this script
from PIL import Image

from deepfake_lightning.cli import cli_main
from deepfake_lightning.export import export_checkpoint
from deepfake_lightning.models import DeepfakeClassifier
from deepfake_lightning.serving.process import ServerProcess

MODELS = {  # name: backbone, image size, images (all of them for `deepfake predict`), requests per clean run
    "demo": ("test_resnet", 64, 1024, 384),
    "convnext": ("convnext_tiny", 224, 288, 96),
}
CLIENTS = (1, 8, 32)


def make_export(backbone: str, size: int, out: Path) -> Path:
    """A random-weight checkpoint of ``backbone`` (as ``deepfake fit`` writes them) exported in both formats."""
    torch.manual_seed(0)
    model = DeepfakeClassifier(backbone, pretrained=False)
    ckpt = out / f"{backbone}.ckpt"
    torch.save(
        {
            "hyper_parameters": dict(model.hparams),
            "state_dict": model.state_dict(),
            "datamodule_hyper_parameters": {
                "img_size": size,
                "mode": "resize",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
        },
        ckpt,
    )
    return export_checkpoint(ckpt, out / f"{backbone}_export", ["safetensors", "onnx"])


def predict_baseline(export: Path, images: Path, out: Path) -> float:
    """Images per second of `deepfake predict --ckpt_path EXPORT --data.predict_paths DIR`: the whole command
    (its few seconds of set-up included, so enough images that inference dominates)."""
    root = images.parent  # the data module still wants a data root with a train.csv, even to predict files
    ids = [f"images/{f.name}" for f in sorted(images.iterdir())][:20]
    pd.DataFrame({"file_name": ids, "label": [0, 1] * (len(ids) // 2)}).to_csv(root / "train.csv")
    start = time.perf_counter()
    cli_main(
        [
            "predict",
            f"--ckpt_path={export}",
            f"--data.root={root}",
            f"--data.predict_paths=[{images}]",
            "--data.test_v1_csv=null",
            "--data.test_v2_csv=null",
            "--data.num_workers=1",
            "--data.batch_size=32",
            f"--trainer.default_root_dir={out}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    return len(list(images.iterdir())) / (time.perf_counter() - start)


def runtime_throughput(export: Path, size: int, batch: int, seconds: float = 3.0) -> dict[str, float]:
    """Images per second of the network alone (no HTTP, no decoding) on PyTorch and on ONNX Runtime."""
    from deepfake_lightning.api import load_detector
    from deepfake_lightning.export import load_onnx

    x = torch.randn(batch, 3, size, size)
    model, onnx = load_detector(export).model, load_onnx(export)
    speeds = {}
    for name, run in (("torch", lambda: model.predict_logits(x)), ("onnx", lambda: onnx.logits(x))):
        with torch.inference_mode():
            run()
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                run()
                n += batch
        speeds[name] = n / (time.perf_counter() - start)
    return speeds


def bad_uploads(good: bytes) -> list[bytes]:
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")
    return [b"not an image at all", good[: len(good) // 2], bomb.getvalue()]


def server_memory_mb(pgid: int) -> float:
    """Memory of every process in the server's process group, in MB: the sum of their proportional set sizes
    (PSS: pages shared between the forked API process and the command are counted once)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
                rollup = (stat.parent / "smaps_rollup").read_text()
                total += int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:")))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return total / 1024


def load(url: str, bodies: list[bytes], clients: int, time_limit: float) -> tuple[float, list[float], list[int]]:
    """Sends ``bodies`` with ``clients`` threads; returns wall seconds, latencies (s) and status codes (0 for a
    request that failed without an answer)."""
    local = threading.local()
    deadline = time.monotonic() + time_limit

    def send(body: bytes) -> tuple[float, int]:
        if time.monotonic() > deadline:
            return float("nan"), -1
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        start = time.perf_counter()
        try:
            status = session.post(
                f"{url}/predict", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120
            ).status_code
        except requests.RequestException:
            status = 0
        return time.perf_counter() - start, status

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for r in pool.map(send, bodies) if r[1] != -1]
    return time.perf_counter() - start, [r[0] for r in results], [r[1] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per clean run (mixed runs: half); default 384 (demo), 96 (convnext)",
    )
    parser.add_argument("--clients", nargs="+", type=int, default=list(CLIENTS), help="concurrent clients per run")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--time_limit", type=float, default=60.0, help="seconds per run at most")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["runtimes", "load"],
        choices=["runtimes", "load"],
        help="runtimes: the network alone on PyTorch and ONNX Runtime; load: the servers",
    )
    parser.add_argument("--out", type=Path, default=None, help="CSV (default: benchmarks/results/serve_load.csv)")
    args = parser.parse_args()
    rows, baselines, runtimes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            backbone, size, n, n_requests = MODELS[name]
            n_requests = args.requests or n_requests
            export = make_export(backbone, size, tmp)
            if "runtimes" in args.parts:
                for batch in (1, 16):
                    speeds = runtime_throughput(export, size, batch)
                    runtimes.append(
                        {
                            "model": name,
                            "batch": batch,
                            "torch_img_s": round(speeds["torch"], 1),
                            "onnx_img_s": round(speeds["onnx"], 1),
                            "onnx_vs_torch": round(speeds["onnx"] / speeds["torch"], 2),
                        }
                    )
                    print(runtimes[-1], flush=True)
            if "load" not in args.parts:
                continue
            write_random_jpegs(tmp / name, "images", n, size)
            files = sorted((tmp / name / "images").iterdir())
            bodies = [f.read_bytes() for f in files]
            predict_img_s = max(predict_baseline(export, tmp / name / "images", tmp / "runs") for _ in range(2))
            baselines.append(
                {
                    "model": name,
                    "backbone": backbone,
                    "px": size,
                    "images": n,
                    "deepfake_predict_img_s": round(predict_img_s, 1),
                }
            )
            print(f"{name}: deepfake predict {predict_img_s:.1f} img/s", flush=True)
            bad = bad_uploads(bodies[0])
            for runtime in args.runtimes:
                for batching in args.batching:
                    flags = ["--ckpt_path", str(export), "--runtime", runtime, "--log_level", "warning"]
                    flags += ["--max_batch_size", "1"] if batching == "off" else []
                    with ServerProcess(flags) as server:
                        load(server.url, bodies[:8], 4, 60)  # warm-up: first batches, lazy allocations
                        memory_start = server_memory_mb(server.process.pid)
                        for clients in args.clients:
                            clean = [bodies[i % n] for i in range(n_requests)]
                            wall, latency, status = load(server.url, clean, clients, args.time_limit)
                            mixed = [
                                bad[(i // 10) % 3] if i % 10 == 9 else bodies[i % n] for i in range(n_requests // 2)
                            ]
                            _, _, mixed_status = load(server.url, mixed, clients, args.time_limit)
                            is_bad = [i % 10 == 9 for i in range(len(mixed_status))]
                            good_answers = [(s, b) for s, b in zip(mixed_status, is_bad, strict=True) if not b]
                            bad_answers = [(s, b) for s, b in zip(mixed_status, is_bad, strict=True) if b]
                            rows.append(
                                {
                                    "model": name,
                                    "runtime": runtime,
                                    "batching": batching,
                                    "clients": clients,
                                    "requests": len(status),
                                    "req_s": round(len(status) / wall, 1),
                                    "vs_predict": round(len(status) / wall / predict_img_s, 2),
                                    "p50_ms": round(1000 * float(np.median(latency)), 1),
                                    "p99_ms": round(1000 * float(np.percentile(latency, 99)), 1),
                                    "errors": sum(s != 200 for s in status),
                                    "mixed_good_errors": sum(s != 200 for s, b in good_answers),
                                    "mixed_bad_4xx": f"{sum(400 <= s < 500 for s, b in bad_answers)}/{sum(is_bad)}",
                                    "memory_start_mb": round(memory_start),
                                    "memory_end_mb": round(server_memory_mb(server.process.pid)),
                                }
                            )
                            print(rows[-1], flush=True)
    print(f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    if runtimes:
        publish(pd.DataFrame(runtimes), "serve_runtimes")
    if rows:
        publish(pd.DataFrame(baselines), "serve_load_baseline")
        publish(pd.DataFrame(rows), "serve_load", args.out)


if __name__ == "__main__":
    main()
