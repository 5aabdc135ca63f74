"""The loaders of ``DeepfakeDataModule`` (a mixin over its ``hparams``, ``indexes``, ``root`` and ``cache``): each
split's dataset with the training or the evaluation transform (a model's inference settings, settings.py), and its
``DataLoader``: weighted sampling of several training datasets, unrepeated shards for evaluation under DDP."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2

from deepfake_lightning.data.dataset import ImageDataset, collate_skip_bad, expand_inputs
from deepfake_lightning.data.index import UNLABELED, DataError
from deepfake_lightning.data.reshare import ReshareCopies
from deepfake_lightning.data.sources import sampling_weights
from deepfake_lightning.data.transforms import create_transform, evaluation_transform
from deepfake_lightning.settings import InferenceSettings


class Loaders:
    """Datasets and loaders of every split; see ``DeepfakeDataModule``."""

    def dataset(
        self, split: str, train: bool = False, perturb=None, eval_views: int | str | None = None, copies: int = 0
    ) -> ImageDataset:
        """The dataset of one split, with the training or the evaluation transform; ``perturb`` (PIL to PIL)
        runs before the evaluation transform, for robustness curves; ``eval_views`` overrides ``data.eval_views``
        (the localization report scores tiles and the centre crop whatever the run evaluates); ``copies=k`` gives
        each image's k re-shared copies of the stability check instead (``data/reshare.py``: ``ReshareCopies``)."""
        if copies:
            perturb = _Copies(copies)
        if split == "files":
            return self._files_dataset(perturb, eval_views)
        if split not in self.indexes:
            configured = ", ".join(self.indexes) or "none (call setup() first)"
            raise KeyError(f"split {split!r} is not configured; configured splits: {configured}")
        hp = self.hparams
        df = self.indexes[split]
        cache = self.cache if split in ("train", "val") else None
        return ImageDataset(
            self.root,
            df["path"],
            df["label"],
            self.transform(train, perturb, eval_views),
            bad_images=hp.bad_images,
            draft_size=self.draft_size,
            cache=cache,
            encoded=self.decodes_on_device(train, perturb) and cache is None,
        )

    @property
    def inference_settings(self) -> InferenceSettings:
        """The data side of the model's inference settings (settings.py): size, mode, normalization, views, tiling
        and JPEG draft decoding, as the evaluation loaders apply them."""
        hp = self.hparams
        return InferenceSettings(**{k: hp[k] for k in InferenceSettings.DATA_KEYS})

    @property
    def draft_size(self) -> int | None:
        return self.inference_settings.draft_size

    def transform(self, train: bool, perturb=None, eval_views: int | str | None = None):
        hp = self.hparams
        if train:
            transform = create_transform(
                hp.img_size,
                train=True,
                mode=hp.mode,
                aug_strength=hp.aug_strength,
                aug_reshare=hp.aug_reshare,
                mean=hp.mean,
                std=hp.std,
                normalize=False,  # uint8 to the device, where the model normalizes
                augment_on=self.augment_location,
            )
        else:  # the one evaluation transform of a model's settings (data/transforms.py), as the Detector's
            transform = evaluation_transform(self.inference_settings.merged(eval_views=eval_views))
        if isinstance(perturb, _Copies):
            return ReshareCopies(perturb.k, transform)
        return transform if perturb is None else v2.Compose([perturb, transform])

    def _files_dataset(self, perturb=None, eval_views: int | str | None = None) -> ImageDataset:

        paths = [str(p) for p in expand_inputs(self.hparams.predict_paths or [], keep_missing=True)]
        if not paths:
            raise DataError(f"data.predict_paths {self.hparams.predict_paths} holds no files")
        return ImageDataset(
            "",
            paths,
            [UNLABELED] * len(paths),
            self.transform(False, perturb, eval_views),
            bad_images="skip",
            draft_size=self.draft_size,
        )

    def images_per_batch(self, train: bool = False, eval_views: int | str | None = None) -> int:
        """``batch_size``, or with tiles ``batch_size // max_tiles`` images (at least one): bounded memory."""
        hp = self.hparams
        views = hp.eval_views if eval_views is None else eval_views
        return hp.batch_size if train or views != "tiles" else max(1, hp.batch_size // hp.max_tiles)

    def loader(
        self, split: str, train: bool = False, perturb=None, eval_views: int | str | None = None, distributed=True
    ) -> DataLoader:
        """The loader of one split (see :meth:`dataset`); ``distributed=False`` gives the whole split to this
        process even under DDP (rank-zero-only extra evaluations)."""
        import torch

        hp = self.hparams
        workers = self.num_workers
        pin = torch.cuda.is_available() if hp.pin_memory is None else hp.pin_memory
        dataset = self.dataset(split, train=train, perturb=perturb, eval_views=eval_views)
        batch_size = self.images_per_batch(train, eval_views)
        sampler = None
        weights = sampling_weights(self.indexes["train"], self.sources.weights, hp.balance) if train else None
        if weights is not None:  # several training datasets, weighted or balanced (data.train_sets, data.balance)
            sampler = WeightedRandomSampler(
                weights.tolist(), len(dataset), replacement=True
            )  # seeded by seed_everything
        if distributed and not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Evaluation under DDP: each image on exactly one rank. Lightning's default DistributedSampler pads
            # the shards with repeated images, which would enter the gathered metrics (AUROC...) twice.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=hp.persistent_workers and workers > 0,
            collate_fn=collate_skip_bad,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        work = (["decoding JPEGs (data.decode=device)"] if hp.decode == "device" else []) + (
            [f"augmenting (data.augment_on={hp.augment_on})"]
            if hp.aug_strength > 0 and self.augment_location == "device"
            else []
        )
        if work:  # the batched device path, whatever the device (on a CPU it runs in the main process)
            where = f"on {self.training_device}, in the main process's batches"
            rank_zero_info(f"Training batches: {' and '.join(work)} {where}")
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        splits = self.test_splits()
        if not splits:
            raise DataError("no test split configured: set data.test_v1_csv and/or data.test_v2_csv")
        return [self.loader(s) for s in splits]

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_name)


class _Copies:
    """``dataset(..., copies=k)``: marks the transform to become :class:`ReshareCopies` of the evaluation transform."""

    def __init__(self, k: int):
        self.k = int(k)
