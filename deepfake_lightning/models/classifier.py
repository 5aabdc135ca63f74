"""``DeepfakeClassifier``: a timm backbone with one logit (1 = AI-generated), trained with BCE."""

from __future__ import annotations

import inspect
from typing import Literal

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy
from torchvision.transforms import v2

from deepfake_lightning.calibration import CalibrationState, evaluation_of
from deepfake_lightning.checkpoints import stored_settings
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.models.backbones import create_backbone
from deepfake_lightning.models.frontends import PIXEL_LEVEL, Frontend, create_frontend
from deepfake_lightning.models.metrics import flatten_metrics, make_metrics
from deepfake_lightning.models.outputs import TestOutputs
from deepfake_lightning.models.steps import EvaluationSteps
from deepfake_lightning.models.training import FreezeBackbone, configure_optimizers
from deepfake_lightning.provenance import ModelFacts, checkpoint_facts, training_record
from deepfake_lightning.scoring import Scorer
from deepfake_lightning.settings import DEFAULTS, InferenceSettings

EVAL_CHUNK = 128  # most images (tiles, views) per forward pass in inference; see tile_logits


class DeepfakeClassifier(EvaluationSteps, L.LightningModule):
    """Binary AI-generated-image detector on any timm backbone.

    Args:
        backbone: timm model name (``convnext_tiny``, ``resnet50``, ``efficientnet_b0``, ``test_convnext``...).
        pretrained: Start from timm's ImageNet weights (needs the Hugging Face hub or its local cache).
        weights: Local timm weights file to start from instead of downloading.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, for backbones that support it.
        optimizer: Optimizer factory; configure as ``class_path``/``init_args`` in YAML.
        scheduler: LR scheduler factory, stepped each epoch. None selects linear warmup then cosine
            decay to zero, stepped each optimizer step.
        warmup_epochs: Warmup length of the default schedule, in epochs (may be fractional).
        freeze_backbone_epochs: Train only the classifier head for this many epochs first (transfer learning).
        freeze_backbone: Train only the classifier head for the whole run, on frozen features (a linear probe,
            as UnivFD does on CLIP ViT-L/14): the backbone stays in eval mode and gets no gradients.
        frontend: ``rgb`` (the image), ``npr`` or ``highpass`` (forensic residuals, see ``models/frontends.py``),
            applied inside the network before the backbone.
        channels_last: Use the channels-last memory format (faster convolutions on GPU with mixed precision).
        tta_flip: At test and predict time, average the logits of each image and its horizontal mirror.
            (Multi-crop test-time augmentation comes from the data side: ``data.eval_views: 5``.)
        tile_pooling: How the tile logits of a tiled evaluation (``data.eval_views: tiles``) become the image's:
            ``max`` (the most suspicious tile decides: an edited region of one tile is enough), ``topk`` (the mean of
            the ``tile_topk`` share of highest tiles) or ``mean``. See the README's "Whole-image verdicts" for the
            comparison the default was chosen on.
        tile_topk: Share of tiles ``topk`` pools, in (0, 1].
        compile: ``torch.compile`` the backbone for training and validation steps: ``true``, or a dict of
            ``torch.compile`` options (``{mode: max-autotune}``). Test, predict and Grad-CAM stay eager (CAM
            hooks need the eager modules). The first steps pay the compilation (tens of seconds).
    """

    def __init__(
        self,
        backbone: str = "convnext_tiny",
        pretrained: bool = True,
        weights: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        warmup_epochs: float = 1.0,
        freeze_backbone_epochs: int = 0,
        freeze_backbone: bool = False,
        frontend: Frontend = DEFAULTS.frontend,
        channels_last: bool = True,
        tta_flip: bool = DEFAULTS.tta_flip,
        tile_pooling: Literal["max", "topk", "mean"] = DEFAULTS.tile_pooling,
        tile_topk: float = DEFAULTS.tile_topk,
        compile: bool | dict = False,
    ):
        super().__init__()
        DEFAULTS.merged(tile_pooling=tile_pooling, tile_topk=tile_topk)  # one error line for a bad pooling
        if freeze_backbone and freeze_backbone_epochs:
            raise ConfigError(
                "model.freeze_backbone (head only, whole run) and model.freeze_backbone_epochs (head "
                "only, then everything) exclude each other: set one"
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.frontend = create_frontend(frontend)
        self.net = create_backbone(backbone, pretrained=pretrained, weights=weights, drop_rate=drop_rate, **extra)
        if freeze_backbone:
            head = {id(p) for p in self.net.get_classifier().parameters()}
            for p in self.net.parameters():
                p.requires_grad_(id(p) in head)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        config = timm.data.resolve_model_data_config(self.net)  # what the CLI links to data.mean and data.std
        self.input_mean, self.input_std = tuple(config["mean"]), tuple(config["std"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_metrics = MetricCollection({"acc": BinaryAccuracy()})
        self.val_metrics = make_metrics()
        self.test_metrics = nn.ModuleDict()  # per labeled test split, at 0.5 and at the tuned threshold
        self.test_splits: list[str] = []
        self.test_outputs = TestOutputs()  # what report callbacks read at the end of `test`
        # Set by the Calibration callback or `deepfake calibrate`; saved in and restored from checkpoints.
        self.calibration: CalibrationState | None = None
        # What a loaded model was trained on (provenance.ModelFacts); None for a model that is being trained.
        self.facts: ModelFacts | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict, map_location: str | torch.device = "cpu") -> DeepfakeClassifier:
        """The eval-mode model of a checkpoint dict from ``checkpoints.load_checkpoint`` (read once, never
        unpickled): built from its hyperparameters without fetching pretrained weights, then its weights,
        calibration and provenance restored."""
        accepted = inspect.signature(cls).parameters
        hparams = {k: v for k, v in stored_settings(ckpt)["model"].items() if k in accepted}
        model = cls(**{**hparams, "pretrained": False, "weights": None})
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(map_location).eval()

    # ------------------------------------------------------------------ calibration state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.calibration is not None:
            checkpoint["calibration"] = self.calibration.to_checkpoint()
        trainer = self._trainer
        if trainer is not None and trainer.datamodule is not None and trainer.state.fn == "fit":
            # What this model was trained on and how it scored: see provenance.py.
            checkpoint["provenance"] = training_record(trainer.datamodule, trainer.callback_metrics)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.calibration = CalibrationState.from_checkpoint(checkpoint.get("calibration"))
        if self.calibration is not None and not self.calibration.evaluation:
            # Calibrated before the evaluation was recorded: on the validation views the run was trained with.
            data = checkpoint.get("datamodule_hyper_parameters", {})
            self.calibration.evaluation = evaluation_of(data, checkpoint.get("hyper_parameters", {}))
        self.facts = checkpoint_facts(checkpoint, source="checkpoint")

    @property
    def settings(self) -> InferenceSettings:
        """This model's inference settings (settings.py): the defaults with its ``model.*`` ones."""
        return DEFAULTS.merged(**{k: self.hparams.get(k) for k in InferenceSettings.MODEL_KEYS})

    @property
    def scorer(self) -> Scorer:
        """The one scorer (scoring.py): tile pooling, calibration and threshold of this model."""
        return Scorer(self.settings, self.calibration)

    @property
    def threshold(self) -> float:
        """Decision threshold on calibrated probabilities, chosen on validation data (``UNCALIBRATED_THRESHOLD`` if
        uncalibrated)."""
        return self.scorer.threshold

    def calibrated_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated AI probabilities, in float64 (float32 on MPS) so that comparisons with the tuned threshold,
        itself one of the validation probabilities, agree exactly with the reports."""
        probs = torch.from_numpy(self.scorer.probs(logits))
        return probs.to(logits.device, torch.float32 if logits.device.type == "mps" else torch.float64)

    @property
    def data_config(self) -> dict:
        """timm's preprocessing for this backbone: ``mean``, ``std``, ``input_size``, ``interpolation``..."""
        return timm.data.resolve_model_data_config(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the AI-generated logit, shape (batch,), of images (batch, 3, H, W): uint8 pixels as the data
        module's loaders deliver them, or float images already normalized (exports, served images)."""
        return self._logits(x, self.net)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to the backbone's normalized float input, on whatever device they are (the loaders ship
        uint8, a quarter of float32's bytes); float images are taken as normalized already and pass unchanged."""
        if x.dtype != torch.uint8:
            return x
        x = v2.functional.to_dtype(x, torch.float32, scale=True)
        return v2.functional.normalize(x, list(self.input_mean), list(self.input_std))

    def _logits(self, x: torch.Tensor, net: nn.Module) -> torch.Tensor:
        x = self.frontend(self.normalize_input(x))
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return net(x).squeeze(-1)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.get("freeze_backbone", False):  # frozen features: batch norm and dropout in eval mode too
            self.net.eval()
            self.net.get_classifier().train(mode)
        return self

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        frontend = self.settings.frontend
        if frontend in PIXEL_LEVEL and getattr(dm, "hparams", {}).get("mode") == "resize":
            rank_zero_warn(
                f"model.frontend={frontend} looks at pixel-level traces that data.mode=resize interpolates "
                "away: use data.mode=crop"
            )
        if stage == "fit" and self.example_input_array is None:
            # Lets Lightning's model summary count real FLOPs (one image at the data module's size) instead of 0.
            size = getattr(dm, "hparams", {}).get("img_size") or self.data_config["input_size"][-1]
            self.example_input_array = torch.zeros(1, 3, size, size)
        options = self.hparams.get("compile", False)
        if options and stage == "fit" and "_compiled_net" not in self.__dict__:
            # Kept out of the module tree, so that state_dict keys and checkpoints are those of the eager net.
            self.__dict__["_compiled_net"] = torch.compile(self.net, **(options if isinstance(options, dict) else {}))

    def predict_logits(
        self, images: torch.Tensor, net: nn.Module | None = None, n_tiles: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Evaluation logits, used alike by validation, calibration, test, predict and Grad-CAM: ``images`` may
        hold several views per image, (B, V, 3, H, W) (e.g. ``data.eval_views: 5``); their logits are averaged,
        and with ``tta_flip`` those of the mirrored views too. With ``n_tiles`` (a tiled batch, ``data/tiles.py``),
        ``images`` holds every image's tiles one after the other, (sum of n_tiles, 3, H, W), and each image's tile
        logits are pooled by the scorer (``scoring.Scorer.pool``). ``net`` defaults to the eager backbone."""
        if n_tiles is not None:
            return self.scorer.pool(self.tile_logits(images, net), n_tiles)
        views = images.unsqueeze(1) if images.ndim == 4 else images
        b, v = views.shape[:2]
        # one pass, no chunking: a branch on the batch size would fix the ONNX export's dynamic batch axis
        return self.tile_logits(views.flatten(0, 1), net, chunk=None).view(b, v).mean(1)

    def tile_logits(
        self, images: torch.Tensor, net: nn.Module | None = None, chunk: int | None = EVAL_CHUNK
    ) -> torch.Tensor:
        """The logit of each image of (N, 3, H, W), averaged with its mirror's under ``tta_flip``; float32. Outside
        training, more than ``chunk`` images go through the network in chunks: a photograph with many tiles needs
        no more activation memory than a batch."""
        net = self.net if net is None else net
        if chunk is not None and len(images) > chunk and not torch.is_grad_enabled():
            return torch.cat([self.tile_logits(part, net, None) for part in images.split(chunk)])
        logits = self._logits(images, net).float()
        if self.settings.tta_flip:
            logits = (logits + self._logits(images.flip(-1), net).float()) / 2
        return logits

    def model_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self._logits(batch["image"], self.__dict__.get("_compiled_net", self.net))
        labels = batch["label"].float()
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        return loss, logits.detach().float(), labels.long()

    # ------------------------------------------------------------------ train
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if "image" not in batch:  # every image of the batch was unreadable and skipped
            return None
        loss, logits, labels = self.model_step(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}: "
                "lower model.optimizer.init_args.lr, or train in 32-true precision"
            )
        self.train_metrics.update(logits.sigmoid(), labels)
        # Not sync_dist: the progress bar (drawn by rank 0 alone) would reduce the epoch value on rank 0 only, and
        # wait for the other ranks forever (it did). Under DDP the epoch mean is rank 0's; see lightning_warnings.
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def on_train_epoch_end(self) -> None:
        # torchmetrics' compute() has synchronised these across processes already; sync_dist=True says so to
        # Lightning, which otherwise warns once per metric under DDP (averaging equal values changes nothing).
        self.log_dict({f"train/{k}": v for k, v in self.train_metrics.compute().items()}, sync_dist=True)
        self.train_metrics.reset()

    # ------------------------------------------------------------------ validate
    def validation_step(self, batch: dict, batch_idx: int) -> dict | None:
        if "image" not in batch:
            return None
        # Validated as tested (views, tta_flip), so that the calibration fitted on these logits fits the test ones.
        logits = self.predict_logits(batch["image"], self.__dict__.get("_compiled_net", self.net), batch.get("n_tiles"))
        labels = batch["label"].long()
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        self.val_metrics.update(logits.sigmoid(), labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        return {"logits": logits}  # for callbacks (e.g. GradCamExport's most confident mistakes)

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics["acc"].update_count == 0:  # sanity check with every image skipped
            return
        values = flatten_metrics(self.val_metrics.compute(), "val")
        self.log("val/auroc", values.pop("val/auroc"), prog_bar=True, sync_dist=True)  # synchronised: see above
        self.log_dict(values, sync_dist=True)
        self.val_metrics.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        return configure_optimizers(self)

    def configure_callbacks(self) -> list:
        if self.hparams.freeze_backbone_epochs > 0:
            return [FreezeBackbone(self.hparams.freeze_backbone_epochs)]
        return []
