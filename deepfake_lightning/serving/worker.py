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

from deepfake_lightning.serving.uploads import error


@dataclass
class Upload:
    """One decoded request: the preprocessed image, or why there is none (``status``, ``code``, ``detail``)."""

    filename: str
    explain: bool
    map: bool = False
    inputs: torch.Tensor | dict | None = None  # the verdict's views (detector.evaluation_transform), uint8
    picture: Image.Image | None = None  # the decoded upload, kept only for ?explain=true (the figure shows it whole)
    tiles: dict | None = None  # ?map=true: the whole image as tiles (the verdict's own, for a tiled model)
    copies: list = field(default_factory=list)  # ?stability=K: K re-shared copies, preprocessed as the verdict's
    evidence: dict | None = None  # the upload's provenance metadata (evidence.py), beside the verdict
    status: int = 200
    code: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.inputs is not None


class Engine:
    """A detector (detector.py: the same one ``deepfake explain`` and ``load_detector`` use) ready to answer
    uploads: the model's own views and calibration on ``runtime`` (``torch``, or ``onnx`` for an export with a
    ``model.onnx``), the threshold, score maps, and Grad-CAM figures (always on the PyTorch weights: ONNX Runtime has
    no gradients; they are loaded on the first ``explain``).

    Exports are read with safetensors, JSON and ONNX Runtime only; a ``.ckpt`` (from ``deepfake fit``) with
    ``torch.load(weights_only=True)`` (checkpoints.py) and served with the PyTorch runtime: nothing is unpickled.
    """

    def __init__(self, ckpt_path: str, runtime: str = "torch", device: str = "cpu", trust_anchors: str | None = None):
        from deepfake_lightning import __version__
        from deepfake_lightning.detector import load_detector

        self.ckpt_path, self.runtime, self.device, self.version = str(ckpt_path), runtime, device, __version__
        self.trust_anchors = trust_anchors  # PEM text: C2PA signers that count as valid
        self.detector = load_detector(ckpt_path, device, runtime)
        settings = self.detector.settings
        self.img_size, self.mode, self.tiled = settings.img_size, settings.mode, settings.tiled
        self.verdict_input = self.detector.evaluation_transform()  # the verdict's views, as deepfake predict's
        # Score maps (and a tiled verdict) need native-resolution tiles: crop-mode models only.
        self.tiler = self.detector.tile_transform(normalize=False) if self.mode == "crop" else None

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def can_explain(self) -> bool:
        return self.detector.can_explain

    def info(self) -> dict:
        """What the page and ``GET /info`` show about the model."""
        from pathlib import Path

        from deepfake_lightning.provenance import DEMO_WARNING

        settings = self.detector.settings
        # every upload comes from outside the demo data, so a demo model always carries the CLI's warning
        return {
            "model": self.detector.backbone,
            "version": self.version,
            "runtime": self.runtime,
            "threshold": self.threshold,
            "fpr_guarantee": self.detector.guarantee or None,
            "img_size": self.img_size,
            "views": settings.describe(),
            "explain": self.can_explain,
            "map": self.tiler is not None,
            "tiled": self.tiled,
            "tile_pooling": settings.tile_pooling if self.tiled else None,
            "source": Path(self.ckpt_path).name,
            "warning": DEMO_WARNING if self.detector.facts.trained_on_demo else None,
        }

    def decode(
        self, data: bytes, filename: str = "upload", explain: bool = False, score_map: bool = False, stability: int = 0
    ) -> Upload:
        """Bytes to the verdict's preprocessed views (and tiles for a score map); an undecodable upload becomes an
        :class:`Upload` with a 400 error, a map asked of a resize-mode model a 422."""
        from deepfake_lightning.data.dataset import BadImageError

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
            picture = self.detector.read(source)  # decoded as deepfake predict decodes the file
            from deepfake_lightning.evidence import read_evidence

            upload.evidence = read_evidence(data, self.trust_anchors).to_json()
            upload.inputs = self.verdict_input(picture)
            if score_map:
                upload.tiles = upload.inputs if self.tiled else self.tiler(picture)
            if explain:
                upload.picture = picture
            if stability:  # the stability check's copies (stability.py), scored as the verdict is
                from deepfake_lightning.data.reshare import Reshare

                upload.copies = [
                    self.verdict_input(Reshare(j, salt_with_image=True)(picture)) for j in range(1, stability + 1)
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

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """The network's logit of each of (N, 3, H, W) images (one view each)."""
        return self.detector.view_logits(images)

    def warm_up(self, max_batch_size: int) -> list[int]:
        """Runs the network once at every batch size up to ``max_batch_size`` on a GPU (once, at batch 1, on a
        CPU), so that no request pays for the first pass at a new batch shape: on CUDA that is cuDNN's choice of
        algorithms and lazily loaded kernels. Returns the batch sizes run."""
        sizes = list(range(1, max_batch_size + 1)) if self.device.startswith("cuda") else [1]
        for n in sizes:
            self.logits(torch.zeros(n, 3, self.img_size, self.img_size, dtype=torch.uint8))
        return sizes

    def score(self, uploads: list[Upload]) -> list[dict]:
        """Each upload's verdict logit, and its map's tile logits and copies' logits where asked, from one pass of
        the network over every view of every upload."""
        inputs, owners = [], []
        for k, u in enumerate(uploads):
            inputs.append(u.inputs)
            owners.append((k, "verdict"))
            if u.tiles is not None and u.tiles is not u.inputs:
                inputs.append(u.tiles)
                owners.append((k, "map"))
            inputs += u.copies
            owners += [(k, "copy")] * len(u.copies)
        scores = [{"copies": []} for _ in uploads]
        parts = self.detector.view_logits_of(inputs)
        for x, part, (k, role) in zip(inputs, parts, owners, strict=True):
            if role == "copy":
                scores[k]["copies"].append(self.detector.combine(x, part))
                continue
            if role == "verdict":
                scores[k]["logit"] = self.detector.combine(x, part)
            if isinstance(x, dict) and uploads[k].tiles is x:
                scores[k]["tiles"] = part
        return scores

    def explain(self, upload: Upload, prob: float) -> bytes:
        """The Grad-CAM figure (PNG bytes) of one upload: the whole image with the network's view marked, that
        view's map of what raised the AI-generated logit with a colour bar, titled with the verdict ``prob``."""
        from deepfake_lightning.explain.figures import explanation_png

        return explanation_png(self.detector, upload.picture, upload.filename, prob)


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
        if upload.explain and upload.ok and not self.engine.can_explain:
            upload.inputs, upload.status, upload.code = None, 422, "explain_unavailable"
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
        good = [u for u in uploads if u.ok]
        scores = iter(self.engine.score(good))  # one forward pass for the batch: views, map tiles, copies
        outputs = []
        for upload in uploads:
            if not upload.ok:
                outputs.append({"status": upload.status, "error": upload.code, "detail": upload.detail})
            else:
                outputs.append(self._answer(upload, next(scores), len(good)))
        return outputs if isinstance(x, list) else outputs[0]

    def _answer(self, upload: Upload, score: dict, batch_size: int) -> dict:
        """One upload's JSON: the verdict, and its stability, map and Grad-CAM figure where asked."""
        engine = self.engine
        prob = float(engine.detector.probs([score["logit"]])[0])
        label = int(engine.detector.labels(prob))
        out = {
            "prob_ai": prob,
            "label": label,
            "verdict": "ai" if label else "human",
            "threshold": engine.threshold,
            "model": engine.detector.backbone,
            "version": engine.version,
            "runtime": self.runtime,
            "batch_size": batch_size,
            "filename": upload.filename,
            "evidence": upload.evidence,
        }
        if engine.tiled:
            out |= {"n_tiles": len(upload.inputs["image"]), "tiles_total": int(upload.inputs["tiles_total"])}
        if upload.copies:  # three-way verdict: uncertain when too many re-shared copies flip it
            out |= self._stability(prob, engine.detector.probs(score["copies"]))
        if upload.map:
            out["map"] = self._map(upload, score["tiles"])
        if upload.explain:
            out["gradcam_png"] = base64.b64encode(engine.explain(upload, prob)).decode("ascii")
        return out

    def _stability(self, prob: float, copies: np.ndarray) -> dict:
        from deepfake_lightning.stability import DEFAULT_TOLERANCE, stability_table

        row = stability_table(np.array([prob]), copies[None], self.engine.threshold, DEFAULT_TOLERANCE)
        return {
            "verdict": str(row["verdict"][0]),
            "stability": {
                "copies": len(copies),
                "prob_min": float(row["prob_min"][0]),
                "prob_max": float(row["prob_max"][0]),
                "flip_rate": float(row["flip_rate"][0]),
                "tolerance": DEFAULT_TOLERANCE,
            },
        }

    def _map(self, upload: Upload, tile_logits: np.ndarray) -> dict:
        detector = self.engine.detector
        width, height = upload.tiles["image_wh"].tolist()
        tile_probs = detector.probs(tile_logits)
        return {
            "width": width,
            "height": height,
            # the tiles pooled as the model pools them; the verdict itself when its views are these tiles
            "prob_ai": float(detector.probs([detector.pool(tile_logits)])[0]),
            "is_verdict": bool(self.engine.tiled),
            "tiles": [
                {"x": int(x), "y": int(y), "size": self.engine.img_size, "prob_ai": float(p)}
                for (x, y), p in zip(upload.tiles["tile_xy"].tolist(), tile_probs, strict=True)
            ],
        }

    def encode_response(self, output: dict):
        if "status" in output:  # this request's own 4xx; the rest of its batch is answered normally
            return error(output["status"], output["error"], output["detail"])
        return output
