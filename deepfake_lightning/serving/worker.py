"""The inference side of ``deepfake serve``: :class:`Engine` (a detector on one runtime) and :class:`DetectorAPI`
(LitServe's ``LitAPI``: decode, batch, predict, encode).

LitServe runs the API in worker processes and forms batches of up to ``max_batch_size`` requests, waiting at most
``batch_timeout`` seconds for a batch to fill. A batch fails as a whole when any of its methods raises, so nothing
here raises for a bad upload: an image that cannot be decoded becomes an :class:`Upload` carrying its error, skips
the forward pass, and is answered with its own 4xx JSON while the other requests of the batch get their verdicts.
"""

from __future__ import annotations

import base64
import io
import signal
import warnings
from dataclasses import dataclass, field

import litserve as ls
import numpy as np
import torch
from PIL import Image

from deepfake_lightning.errors import ConfigError
from deepfake_lightning.serving.uploads import error


@dataclass
class Upload:
    """One decoded request: the preprocessed image, or why there is none (``status``, ``code``, ``detail``)."""

    filename: str
    explain: bool
    map: bool = False
    image: torch.Tensor | None = None  # the single-view input (the verdict's, or Grad-CAM's for a tiled verdict)
    tiles: dict | None = None  # the whole image as tiles (data/tiles.py): a tiled verdict, or ?map=true
    copies: list = field(default_factory=list)  # ?stability=K: K re-shared copies, preprocessed as the verdict's
    evidence: dict | None = None  # the upload's provenance metadata (evidence.py), beside the verdict
    status: int = 200
    code: str = ""
    detail: str = ""


class Engine:
    """A detector ready to answer: preprocessing, logits on ``runtime`` (``torch``, or ``onnx`` for an export with a
    ``model.onnx``), calibrated probabilities, the threshold, and Grad-CAM overlays (always on the PyTorch weights:
    ONNX Runtime has no gradients; they are loaded on the first ``explain``).

    Exports are read with safetensors, JSON and ONNX Runtime only; a ``.ckpt`` (from ``deepfake fit``) with
    ``torch.load(weights_only=True)`` (checkpoints.py) and served with the PyTorch runtime: nothing is unpickled.
    """

    def __init__(self, ckpt_path: str, runtime: str = "torch", device: str = "cpu", trust_anchors: str | None = None):
        from deepfake_lightning import __version__
        from deepfake_lightning.checkpoints import export_calibration, is_export
        from deepfake_lightning.errors import ExportError

        self.ckpt_path, self.runtime, self.device, self.version = str(ckpt_path), runtime, device, __version__
        self.trust_anchors = trust_anchors  # PEM text: C2PA signers that count as valid
        self._detector = None
        if runtime == "onnx":
            from deepfake_lightning.calibration import CalibrationState, Calibrator
            from deepfake_lightning.data.transforms import create_transform
            from deepfake_lightning.export.folder import load_onnx
            from deepfake_lightning.provenance import export_facts

            if not is_export(ckpt_path):
                raise ExportError(
                    f"--runtime onnx serves an export folder with a model.onnx, not {ckpt_path!r}: "
                    f"deepfake export --ckpt_path {ckpt_path} --out DIR --format safetensors onnx"
                )
            self.onnx = load_onnx(ckpt_path, ["CUDAExecutionProvider"] if device.startswith("cuda") else None)
            config = self.onnx.config
            state = CalibrationState.from_json(export_calibration(config))
            self.calibrator = state.calibrator if state else Calibrator()
            self.threshold = float(config["threshold"])
            self.guarantee = dict(state.guarantee) if state else {}
            self.backbone = config["backbone"]
            self.mean, self.std = tuple(config["mean"]), tuple(config["std"])
            self.img_size = int(config["img_size"])
            self.facts = export_facts(config, source=self.ckpt_path)
            views = 5 if config.get("eval_views") == 5 else 1  # five crops: averaged as deepfake predict does
            self.transform = create_transform(
                self.img_size, train=False, mode=config["mode"], mean=self.mean, std=self.std, eval_views=views
            )
            self.mode, self.tiled = config["mode"], config.get("eval_views") == "tiles"
            self.pooling = (config.get("tile_pooling", "max"), float(config.get("tile_topk", 0.25)))
            tiling = (config.get("tile_stride"), int(config.get("max_tiles", 64)))
        elif runtime == "torch":
            detector = self.detector  # loads it
            self.calibrator, self.threshold = detector.model.calibrator, float(detector.threshold)
            self.guarantee = dict(detector.model.calibration.guarantee) if detector.model.calibration else {}
            self.backbone = detector.model.hparams.backbone
            self.mean, self.std, self.img_size = detector.mean, detector.std, detector.img_size
            # The verdict's own views (api.Detector.views): five crops for a five-view model, else one.
            self.transform = detector.evaluation_transform() if detector.views == 5 else detector.transform
            self.facts = detector.facts
            self.mode, self.tiled = detector.mode, detector.tiled
            hp = detector.model.hparams
            self.pooling = (hp.get("tile_pooling", "max"), float(hp.get("tile_topk", 0.25)))
            tiling = (detector.data.get("tile_stride"), int(detector.data.get("max_tiles", 64)))
        else:
            raise ConfigError(f"--runtime {runtime!r}: choose torch or onnx")
        from deepfake_lightning.data.tiles import TileTransform

        # Score maps (and a tiled verdict) need native-resolution tiles: crop-mode models only.
        self.tiler = TileTransform(self.img_size, *tiling, self.mean, self.std) if self.mode == "crop" else None

    @property
    def detector(self):
        """The PyTorch detector (``api.Detector``), loaded on first use."""
        if self._detector is None:
            from deepfake_lightning.api import load_detector

            self._detector = load_detector(self.ckpt_path, map_location=self.device)
        return self._detector

    @property
    def can_explain(self) -> bool:
        """Grad-CAM needs the PyTorch weights: a ``.ckpt``, or an export with ``model.safetensors``."""
        if self.runtime == "torch":
            return True
        return "safetensors" in self.onnx.config.get("formats", ["safetensors"])

    def info(self) -> dict:
        """What the page and ``GET /info`` show about the model."""
        from pathlib import Path

        from deepfake_lightning.provenance import DEMO_WARNING

        # every upload comes from outside the demo data, so a demo model always carries the CLI's warning
        return {
            "model": self.backbone,
            "version": self.version,
            "runtime": self.runtime,
            "threshold": self.threshold,
            "fpr_guarantee": self.guarantee or None,
            "img_size": self.img_size,
            "explain": self.can_explain,
            "map": self.tiler is not None,
            "tiled": self.tiled,
            "tile_pooling": self.pooling[0] if self.tiled else None,
            "source": Path(self.ckpt_path).name,
            "warning": DEMO_WARNING if self.facts.trained_on_demo else None,
        }

    def decode(
        self, data: bytes, filename: str = "upload", explain: bool = False, score_map: bool = False, stability: int = 0
    ) -> Upload:
        """Bytes to a preprocessed image (and its tiles for a tiled verdict or a score map); an undecodable upload
        becomes an :class:`Upload` with a 400 error, a map asked of a resize-mode model a 422."""
        from deepfake_lightning.data.dataset import BadImageError, load_image

        upload = Upload(filename, explain, score_map)
        if score_map and self.tiler is None:
            upload.status, upload.code = 422, "map_unavailable"
            upload.detail = (
                f"no score map from this model: it is data.mode={self.mode}, it sees whole images squashed to "
                f"{self.img_size} px; maps score native-resolution tiles, which needs a crop-mode model"
            )
            return upload
        source = io.BytesIO(data)
        source.name = filename
        try:
            picture = load_image(source)
            from deepfake_lightning.evidence import read_evidence

            upload.evidence = read_evidence(data, self.trust_anchors).to_json()
            upload.image = self.transform(picture)
            if self.tiled or score_map:
                upload.tiles = self.tiler(picture)
            if stability:  # the stability check's copies (stability.py), scored as the verdict is
                from deepfake_lightning.data.reshare import Reshare

                verdict_input = self.tiler if self.tiled else self.transform
                upload.copies = [
                    verdict_input(Reshare(j, salt_with_image=True)(picture)) for j in range(1, stability + 1)
                ]
        except BadImageError as e:
            cause = e.__cause__
            if isinstance(cause, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
                upload.code, upload.detail = "decompression_bomb", f"{filename}: decompression bomb refused: {cause}"
            elif isinstance(cause, Image.UnidentifiedImageError):
                upload.code, upload.detail = "not_an_image", f"{filename}: not an image (no image format recognised)"
            else:
                upload.code, upload.detail = "corrupt_image", f"{filename}: truncated or corrupt image data ({cause})"
            upload.status = 400
        return upload

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> np.ndarray:
        if self.runtime == "onnx":
            if images.ndim == 5:  # (B, views, 3, H, W): each image's views averaged, as predict_logits does
                b, v = images.shape[:2]
                return self.onnx.logits(images.flatten(0, 1)).reshape(b, v).mean(1)
            return self.onnx.logits(images)
        model = self.detector.model
        return model.predict_logits(images.to(model.device)).float().cpu().numpy()

    def warm_up(self, max_batch_size: int) -> list[int]:
        """Runs the network once at every batch size up to ``max_batch_size`` on a GPU (once, at batch 1, on a
        CPU), so that no request pays for the first pass at a new batch shape: on CUDA that is cuDNN's choice of
        algorithms and lazily loaded kernels. Returns the batch sizes run."""
        sizes = list(range(1, max_batch_size + 1)) if self.device.startswith("cuda") else [1]
        for n in sizes:
            self.logits(torch.zeros(n, 3, self.img_size, self.img_size))
        return sizes

    def pool(self, tile_logits: np.ndarray) -> float:
        """The image logit of one image's tile logits, by the model's ``tile_pooling``."""
        from deepfake_lightning.data.tiles import pool_tile_logits

        logits = torch.from_numpy(np.asarray(tile_logits, dtype=np.float32))
        return float(pool_tile_logits(logits, torch.tensor([len(logits)]), *self.pooling)[0])

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated AI probabilities (the checkpoint's calibration, as ``deepfake predict`` applies it)."""
        return self.calibrator(logits)

    def explain(self, images: torch.Tensor, min_side: int = 256) -> list[bytes]:
        """Grad-CAM overlays (PNG bytes) of the AI-generated logit, upscaled to at least ``min_side`` pixels."""
        from deepfake_lightning.explain.cam import CamExplainer, denormalize, overlay

        with CamExplainer(self.detector.model) as explainer:
            cams = explainer(images).cam
        pngs = []
        for rgb, cam in zip(denormalize(images, self.mean, self.std), cams, strict=False):
            picture = Image.fromarray(overlay(rgb, cam))
            if min(picture.size) < min_side:
                scale = min_side / min(picture.size)
                picture = picture.resize(
                    (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BILINEAR
                )
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs


class DetectorAPI(ls.LitAPI):
    """``POST /predict``: one image in (raw bytes or multipart, see ``serving/uploads.py``), one verdict out::

        {"prob_ai": 0.93, "label": 1, "verdict": "ai", "threshold": 0.52, "model": "convnext_tiny",
         "version": "0.1.0", "runtime": "torch", "batch_size": 4, "filename": "cat.jpg"}

    ``label`` is 1 (AI-generated) when the calibrated ``prob_ai`` reaches the checkpoint's ``threshold``;
    ``batch_size`` is how many requests shared the forward pass; ``?explain=true`` adds ``gradcam_png``, a base64
    PNG of the Grad-CAM overlay; ``?map=true`` (crop-mode models) adds ``map``: the image's ``width``, ``height`` and
    ``tiles``, each ``{"x", "y", "size", "prob_ai"}`` (calibrated, pixel coordinates in the upload). A model whose
    verdict scores tiles (``eval_views: tiles``) adds ``n_tiles`` and ``tiles_total`` to every answer.
    ``?stability=K`` scores K seeded re-shared copies too (``stability.py``): ``verdict`` becomes ``ai``, ``human``
    or ``uncertain``, and ``stability`` gives ``copies``, ``prob_min``, ``prob_max``, ``flip_rate``, ``tolerance``.
    Every answer has ``evidence``: what the file's own metadata says (``evidence.py``: ``c2pa``, ``source_type``,
    ``generator``, ``camera``, ``summary``), beside the verdict; it never changes ``prob_ai``.
    """

    def __init__(
        self,
        ckpt_path: str,
        runtime: str = "torch",
        max_batch_size: int = 16,
        batch_timeout: float = 0.01,
        trust_anchors: str | None = None,
        **kwargs,
    ):
        with warnings.catch_warnings():  # LitServe warns that batch/unbatch exist while batching is off (size 1)
            warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch methods")
            super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, **kwargs)
        self.ckpt_path, self.runtime, self.trust_anchors = str(ckpt_path), runtime, trust_anchors

    def setup(self, device: str) -> None:
        # An inference worker process: Ctrl+C in the terminal reaches it too, but stopping is the command's
        # (`deepfake serve` stops every worker); without this each worker died of it with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.engine = Engine(self.ckpt_path, self.runtime, device, self.trust_anchors)
        self.engine.warm_up(self.max_batch_size)

    def decode_request(self, request) -> Upload:
        upload = self.engine.decode(
            base64.b64decode(request["image"]),
            request.get("filename", "upload"),
            bool(request.get("explain")),
            bool(request.get("map")),
            int(request.get("stability", 0)),
        )
        if upload.explain and upload.image is not None and not self.engine.can_explain:
            upload.image, upload.status, upload.code = None, 422, "explain_unavailable"
            upload.detail = (
                "this server cannot explain: its export has no PyTorch weights (model.safetensors) for "
                "Grad-CAM; export with --format safetensors onnx, or ask without explain=true"
            )
        return upload

    def batch(self, inputs: list[Upload]) -> list[Upload]:
        return list(inputs)

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def predict(self, x: Upload | list[Upload]) -> dict | list[dict]:
        uploads = x if isinstance(x, list) else [x]
        good = [u for u in uploads if u.image is not None]
        tiled, maps = self.engine.tiled, {}
        if good:
            # One forward pass for the batch: each upload's single view (unless its verdict is tiled), then every
            # upload's tiles; the verdicts come from the former or the pooled tiles, the maps from the tiles.
            singles = [] if tiled else [u.image for u in good]
            tiles = [u.tiles["image"] for u in good if u.tiles is not None]
            if singles and singles[0].ndim == 4:  # five views per image: their own pass, averaged per image
                parts = [self.engine.logits(torch.stack(singles))] + (
                    [self.engine.logits(torch.cat(tiles))] if tiles else []
                )
                logits = np.concatenate(parts)
            else:
                logits = self.engine.logits(torch.cat(([torch.stack(singles)] if singles else []) + tiles))
            verdicts, at = list(logits[: len(singles)]), len(singles)
            for k, u in enumerate(good):
                if u.tiles is None:
                    continue
                n = len(u.tiles["image"])
                part, at = logits[at : at + n], at + n
                if tiled:
                    verdicts.append(self.engine.pool(part))
                maps[k] = part
            probs = self.engine.probs(np.asarray(verdicts, dtype=np.float32))
            copies = {k: self.engine.probs(self._copy_logits(u.copies)) for k, u in enumerate(good) if u.copies}
            images = torch.stack([u.image for u in good])
            wanted = [i for i, u in enumerate(good) if u.explain]
            pngs = dict(zip(wanted, self.engine.explain(images[wanted]), strict=False)) if wanted else {}
        info, outputs, k = self.engine.info(), [], 0
        for upload in uploads:
            if upload.image is None:
                outputs.append({"status": upload.status, "error": upload.code, "detail": upload.detail})
                continue
            prob = float(probs[k])
            label = int(prob >= self.engine.threshold)
            out = {
                "prob_ai": prob,
                "label": label,
                "verdict": "ai" if label else "human",
                "threshold": self.engine.threshold,
                "model": info["model"],
                "version": info["version"],
                "runtime": self.runtime,
                "batch_size": len(good),
                "filename": upload.filename,
                "evidence": upload.evidence,
            }
            if tiled:
                out |= {"n_tiles": len(upload.tiles["image"]), "tiles_total": int(upload.tiles["tiles_total"])}
            if k in copies:  # three-way verdict: uncertain when too many re-shared copies flip it
                from deepfake_lightning.stability import DEFAULT_TOLERANCE, stability_table

                row = stability_table(np.array([prob]), copies[k][None], self.engine.threshold, DEFAULT_TOLERANCE)
                out["verdict"] = str(row["verdict"][0])
                out["stability"] = {
                    "copies": len(copies[k]),
                    "prob_min": float(row["prob_min"][0]),
                    "prob_max": float(row["prob_max"][0]),
                    "flip_rate": float(row["flip_rate"][0]),
                    "tolerance": DEFAULT_TOLERANCE,
                }
            if upload.map:
                size, (width, height) = self.engine.img_size, upload.tiles["image_wh"].tolist()
                tile_probs = self.engine.probs(maps[k])
                out["map"] = {
                    "width": width,
                    "height": height,
                    # the tiles pooled as the model pools them; the verdict itself when its views are these tiles
                    "prob_ai": float(self.engine.probs(np.asarray([self.engine.pool(maps[k])], dtype=np.float32))[0]),
                    "is_verdict": bool(tiled),
                    "tiles": [
                        {"x": int(x), "y": int(y), "size": size, "prob_ai": float(p)}
                        for (x, y), p in zip(upload.tiles["tile_xy"].tolist(), tile_probs, strict=True)
                    ],
                }
            if k in pngs:
                out["gradcam_png"] = base64.b64encode(pngs[k]).decode("ascii")
            outputs.append(out)
            k += 1
        return outputs if isinstance(x, list) else outputs[0]

    def _copy_logits(self, copies: list) -> np.ndarray:
        """Logits of one upload's re-shared copies (single views batched, or each copy's tiles pooled)."""
        if not self.engine.tiled:
            return self.engine.logits(torch.stack(copies))
        logits = self.engine.logits(torch.cat([c["image"] for c in copies]))
        parts = np.split(logits, np.cumsum([len(c["image"]) for c in copies])[:-1])
        return np.array([self.engine.pool(p) for p in parts], dtype=np.float32)

    def encode_response(self, output: dict):
        if "status" in output:  # this request's own 4xx; the rest of its batch is answered normally
            return error(output["status"], output["error"], output["detail"])
        return output
