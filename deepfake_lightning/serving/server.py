"""``build_server`` (a configured ``litserve.LitServer``) and ``deepfake serve``."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys

from deepfake_lightning.errors import DeepfakeError


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake serve",
        description="Serve a detector over HTTP (LitServe): POST /predict with one image (raw bytes or multipart) "
        "returns its calibrated AI probability and verdict at the checkpoint's threshold (?explain=true adds a "
        "Grad-CAM overlay, ?map=true the whole image's tile scores for a crop-mode model); GET / is a page to "
        "drop images on; GET /health and /info. Requests are batched on the server.",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="a `deepfake export` folder (read without unpickling; "
        "needed for --runtime onnx) or a .ckpt from deepfake fit (a pickle: only files you trust)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnx"],
        help="torch (default), or onnx: ONNX Runtime on the export's model.onnx (deepfake export "
        "--format safetensors onnx); Grad-CAM overlays always use the PyTorch weights",
    )
    parser.add_argument(
        "--max_batch_size",
        type=int,
        default=16,
        help="most requests answered by one forward pass (default 16; 1 turns batching off)",
    )
    parser.add_argument(
        "--batch_timeout",
        type=float,
        default=0.01,
        help="seconds a batch waits to fill up before it runs anyway (default 0.01)",
    )
    parser.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    parser.add_argument("--workers_per_device", type=int, default=1, help="inference processes per device (default 1)")
    parser.add_argument(
        "--accelerator",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="default auto: CUDA when there is a GPU",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a request may wait for its answer (default 30)"
    )
    parser.add_argument(
        "--trust_anchors",
        default=None,
        help="PEM file of certificates whose C2PA signers count as valid (others: unverified)",
    )
    parser.add_argument(
        "--log_level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="default info (one line per request)",
    )
    return parser


def build_server(
    ckpt_path: str | os.PathLike,
    runtime: str = "torch",
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    max_upload_mb: float = 20.0,
    workers_per_device: int = 1,
    accelerator: str = "auto",
    timeout: float = 30.0,
    trust_anchors: str | None = None,
):
    """A ``litserve.LitServer`` for the detector at ``ckpt_path``. The detector is loaded here once, so that a bad
    path, export or ONNX file is an error now rather than in a worker process; the workers load their own copy."""
    try:
        import litserve as ls
    except ImportError as e:
        raise DeepfakeError("deepfake serve needs LitServe: pip install 'deepfake-lightning[serve]'") from e

    from deepfake_lightning.serving.uploads import UploadGate
    from deepfake_lightning.serving.worker import DetectorAPI, Engine

    if max_batch_size < 1 or batch_timeout < 0 or max_upload_mb <= 0 or workers_per_device < 1:
        raise DeepfakeError(
            "--max_batch_size and --workers_per_device must be >= 1, --batch_timeout >= 0 and --max_upload_mb > 0"
        )
    if not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"--ckpt_path: no checkpoint file or export folder at {str(ckpt_path)!r}")
    from deepfake_lightning.evidence import load_trust_anchors

    anchors = load_trust_anchors(trust_anchors, "--trust_anchors")
    info = Engine(str(ckpt_path), runtime).info()
    api = DetectorAPI(
        str(ckpt_path), runtime, max_batch_size=max_batch_size, batch_timeout=batch_timeout, trust_anchors=anchors
    )
    return ls.LitServer(
        api,
        accelerator=accelerator,
        workers_per_device=workers_per_device,
        timeout=timeout,
        model_metadata=info,
        middlewares=[(UploadGate, {"api_path": api.api_path, "max_bytes": int(max_upload_mb * 2**20)})],
    )


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
            raise DeepfakeError(f"--host {host} --port {port} {why}: choose another --port") from e


def serve_main(args: list[str]) -> None:
    """``deepfake serve --ckpt_path DIR|CKPT [--runtime torch|onnx] [--max_batch_size N] [--batch_timeout S] ...``"""
    a = serve_parser().parse_args(args)
    if not os.path.exists(a.ckpt_path):
        raise FileNotFoundError(f"--ckpt_path: no checkpoint file or export folder at {a.ckpt_path!r}")
    _check_port(a.host, a.port)
    server = build_server(
        a.ckpt_path,
        a.runtime,
        a.max_batch_size,
        a.batch_timeout,
        a.max_upload_mb,
        a.workers_per_device,
        a.accelerator,
        a.timeout,
        a.trust_anchors,
    )
    info = server.model_metadata
    url = f"http://{'127.0.0.1' if a.host in ('0.0.0.0', '::') else a.host}:{a.port}"
    print(
        f"Serving {info['model']} from {a.ckpt_path} (runtime {a.runtime}, threshold {info['threshold']:.4f}, "
        f"batches of up to {a.max_batch_size}). Once the workers are up (GET {url}/health says ok): the "
        f"page at {url}/, the API at POST {url}/predict. Ctrl+C or `kill {os.getpid()}` stops it.",
        file=sys.stderr,
        flush=True,
    )
    # `kill PID` (SIGTERM) stops the server as Ctrl+C does: LitServe shuts its API processes and inference workers
    # down on KeyboardInterrupt. Without this the command died alone and its workers went on answering on the port.
    global _COMMAND_PID
    _COMMAND_PID = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    server.run(host=a.host, port=a.port, generate_client_file=False, log_level=a.log_level)


_COMMAND_PID = os.getpid()


def _interrupt(signum, frame) -> None:
    """SIGINT (Ctrl+C, which a terminal sends to the whole process group) and SIGTERM (`kill PID`) stop the command:
    a KeyboardInterrupt, on which LitServe stops its processes. The API processes LitServe forks inherit this
    handler: there Ctrl+C is left to the command (they used to die of it with a traceback each), and LitServe's own
    SIGTERM ends them as SIGTERM ends a process. (Inference workers ignore Ctrl+C themselves: serving/worker.py.)"""
    if os.getpid() == _COMMAND_PID:
        raise KeyboardInterrupt
    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
