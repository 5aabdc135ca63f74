"""The ONNX side of an export: ``model.onnx`` written by ``deepfake export --format onnx`` and run by ONNX Runtime.

The graph is the network of ``DeepfakeClassifier.predict_logits`` (front-end, backbone, and the mirrored view when
the model was trained with ``tta_flip``): normalized images ``image`` (batch, 3, img_size, img_size) float32 in,
``logit`` (batch,) out, with a dynamic batch axis. Everything around it stays in ``detector.json``, read by the
same code as for the PyTorch weights: the preprocessing (image size, resize/crop mode, normalization), the
calibration (temperature...) and the decision threshold, and for a tiled verdict (``eval_views: tiles``) the tiling
and the pooling: the caller cuts the image into tiles (``data/tiles.py``), the graph scores them as a batch, the
caller pools their logits (``tile_pooling``). ``detector.json``'s ``onnx`` entry records the file's
SHA-256, so an ONNX file from another export (or a damaged one) is refused with a clear error instead of giving
another model's answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfake_lightning.errors import ExportError
from deepfake_lightning.files import file_sha256

ONNX_FILE = "model.onnx"
OPSET = 18
INPUT, OUTPUT = "image", "logit"


class _EvalLogits(nn.Module):
    """``predict_logits`` as a module's forward, for the exporter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.predict_logits(image)


def write_onnx(model: nn.Module, path: str | os.PathLike, img_size: int) -> dict:
    """Exports a ``DeepfakeClassifier`` (in eval mode) to ``path`` with torch.onnx's ``torch.export``-based exporter
    (needs the ``onnxscript`` package) and a dynamic batch axis. Returns the ``onnx`` entry of ``detector.json``."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; say so before a deep ImportError)
    except ImportError as e:
        raise ExportError(
            "--format onnx needs the onnx and onnxscript packages: pip install 'deepfake-lightning[serve]'"
        ) from e
    from deepfake_lightning.files import atomic_path

    wrapper = _EvalLogits(model.eval()).eval()
    example = torch.zeros(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp, torch.no_grad():
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"image": {0: batch}},
                opset_version=OPSET,
                verbose=False,
                external_data=False,
            )
        except Exception as e:  # torch.onnx raises its own error types for unsupported operators or shapes
            backbone = model.hparams.get("backbone", type(model).__name__)
            raise ExportError(
                f"--format onnx: torch.onnx cannot export {backbone} ({type(e).__name__}: {e}); "
                "the safetensors export works for every backbone"
            ) from e
        program.save(str(tmp))
    return {
        "file": Path(path).name,
        "sha256": file_sha256(path),
        "opset": OPSET,
        "input": INPUT,
        "output": OUTPUT,
        "input_shape": ["batch", 3, img_size, img_size],
        "torch": torch.__version__,
    }


class OnnxModel:
    """An export's ``model.onnx`` (use ``load_onnx(DIR)``) in an ONNX Runtime session (CPU unless
    ``providers`` say otherwise), checked against ``detector.json``: the file's SHA-256 and its input and output
    shapes. ``logits(images)`` takes normalized (B, 3, H, W) images (a tensor or an array), or uint8 pixels as the
    data module's loaders deliver them (normalized here with detector.json's ``mean`` and ``std``), and returns
    (B,) float32 logits."""

    def __init__(
        self,
        export_dir: str | os.PathLike,
        config: dict,
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        self.export_dir = Path(export_dir)
        self.config = config  # its detector.json, read by checkpoints.read_export_config (load_onnx does both)
        entry = self.config.get("onnx")
        detector_json = self.export_dir / "detector.json"
        if not entry:
            raise ExportError(
                f"{detector_json}: this export has no ONNX model; write one with: deepfake export "
                f"--ckpt_path CKPT --out {self.export_dir} --format safetensors onnx"
            )
        self.path = self.export_dir / entry.get("file", ONNX_FILE)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: missing (detector.json lists an ONNX model)")
        if file_sha256(self.path) != entry.get("sha256"):
            raise ExportError(
                f"{self.path} is not the ONNX model detector.json was written with (its SHA-256 "
                f"differs): a file from another export, or damaged; export again with --format onnx"
            )
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("--runtime onnx needs ONNX Runtime: pip install 'deepfake-lightning[serve]'") from e
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        available = ort.get_available_providers()  # e.g. no CUDAExecutionProvider in the CPU-only package
        providers = [p for p in providers or [] if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail...)
            raise ExportError(f"{self.path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        size = int(self.config["img_size"])
        shape = list(inputs[0].shape) if len(inputs) == 1 else None
        if (
            shape is None
            or len(shape) != 4
            or shape[1:] != [3, size, size]
            or len(outputs) != 1
            or len(outputs[0].shape) != 1
        ):
            found = (
                ", ".join(f"{i.name} {i.shape}" for i in inputs)
                + " -> "
                + ", ".join(f"{o.name} {o.shape}" for o in outputs)
            )
            raise ExportError(
                f"{self.path} does not fit {detector_json}: expected one input (batch, 3, {size}, "
                f"{size}) and one output (batch,), found {found}"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name

    def logits(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype == np.uint8:  # the torch model's normalize_input, in NumPy
            mean = np.asarray(self.config["mean"], np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(self.config["std"], np.float32).reshape(1, 3, 1, 1)
            array = (array.astype(np.float32) / 255 - mean) / std
        (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(array, np.float32)})
        return out.reshape(-1).astype(np.float32)


def load_onnx(export_dir: str | os.PathLike, providers: list[str] | None = None) -> OnnxModel:
    """An export's ``model.onnx`` in an ONNX Runtime session, checked against its ``detector.json``."""
    from deepfake_lightning.checkpoints import read_export_config

    return OnnxModel(export_dir, read_export_config(export_dir), providers)
