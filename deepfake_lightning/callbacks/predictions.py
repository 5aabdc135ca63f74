"""``PredictionWriter``: after ``deepfake predict``, the predictions and the Kaggle submission, and one line each."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.callbacks._console import PrintsResults
from deepfake_lightning.callbacks.passes import copies_table
from deepfake_lightning.data.dataset import read_error
from deepfake_lightning.errors import DataError
from deepfake_lightning.evaluation import write_predictions
from deepfake_lightning.evidence import evidence_columns, evidence_of, load_trust_anchors
from deepfake_lightning.provenance import DEMO_WARNING, outside_demo_data
from deepfake_lightning.stability import DEFAULT_TOLERANCE, check_stability


class PredictionWriter(BasePredictionWriter, PrintsResults):
    """After ``deepfake predict``, writes ``predictions/<split>.csv`` (``id,prob_ai,label``: calibrated probability,
    label at the tuned threshold, or, for splits in ``adapt_splits``, at the threshold adapted to the split's AI
    share as EM estimates it from these predictions) and ``submission_<split>.csv`` in the Kaggle format
    (``id,label``: the split's ids in its order, one row each) to the run directory, and prints where they are.

    Args:
        adapt_splits: Splits whose threshold is adapted to their estimated AI share. The CLI links it to
            ``calibration.adapt_splits``: one setting for ``test`` and ``predict``.
        shift_tolerance: As ``calibration.shift_tolerance`` (linked likewise).
        stability: As ``report.stability`` (linked): score each image on this many re-shared copies and add
            ``prob_min, prob_max, flip_rate, verdict`` (``ai``, ``human`` or ``uncertain``) to the predictions.
        stability_tolerance: As ``report.stability_tolerance`` (linked).
        evidence: As ``report.evidence`` (linked): add each image's provenance metadata, the ``evidence_c2pa``,
            ``evidence_source_type``, ``evidence_generator``, ``evidence_camera`` and ``evidence_summary`` columns
            (``evidence.py``).
        trust_anchors: As ``report.trust_anchors`` (linked).
    """

    def __init__(
        self,
        adapt_splits: list[str] | None = None,
        shift_tolerance: float = 0.05,
        stability: int = 0,
        stability_tolerance: float = DEFAULT_TOLERANCE,
        evidence: bool = True,
        trust_anchors: str | None = None,
    ):
        super().__init__(write_interval="epoch")
        self.evidence = evidence
        self.trust_anchors = load_trust_anchors(trust_anchors, "predictions.trust_anchors")
        check_stability(stability, stability_tolerance)
        self.adapt_splits = list(adapt_splits or [])
        self.shift_tolerance = shift_tolerance
        self.stability = stability
        self.stability_tolerance = stability_tolerance
        self.written: dict = {}

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        parts = [p for p in predictions if len(p["index"])]
        keys = ["index", "prob_ai"] + [k for k in ("n_tiles", "tiles_total") if parts and k in parts[0]]
        columns = {
            k: torch.cat([p[k] for p in parts]).cpu() if parts else torch.empty(0, dtype=torch.long) for k in keys
        }
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if trainer.world_size > 1:  # per image: a tiled evaluation sends its tile counts, not its tiles
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, columns)
            columns = {k: torch.cat([g[k] for g in gathered if k in g]) for k in keys}
        if not trainer.is_global_zero:
            return
        index, first = np.unique(columns.pop("index").numpy(), return_index=True)
        probs = columns.pop("prob_ai").numpy()[first]
        tiles = {k: v.numpy()[first] for k, v in columns.items()}
        dm = trainer.datamodule
        split = dm.predict_name
        ids = dm.split_ids(split)
        threshold = self._threshold(trainer, pl_module, split, probs)
        out = Path(log_dir or trainer.default_root_dir)
        stable, extra = None, tiles
        if self.stability:  # the Kaggle submission keeps the image's own 0/1 verdict: uncertain is a column
            k, tolerance = self.stability, self.stability_tolerance
            stable = copies_table(trainer, pl_module, split, index, probs, k, tolerance, threshold)
            extra = tiles | {column: stable[column].to_numpy() for column in stable.columns}
        if self.evidence:  # what each file's metadata says, beside (never inside) prob_ai
            root = Path("") if split == "files" else dm.root
            extra = extra | evidence_columns(evidence_of([root / ids[i] for i in index], self.trust_anchors))
        predicted = {ids[j] for j in index}
        skipped = [i for i in ids if i not in predicted] if len(index) < len(ids) else []
        limited = trainer.limit_predict_batches not in (None, 1.0)
        root = Path("") if split == "files" else dm.root
        failed = {} if limited else {i: read_error(root / i) or "not predicted" for i in skipped}
        written = write_predictions(
            out, split, [ids[i] for i in index], probs, threshold, None if split == "files" else ids, extra, failed
        )
        self.written = written
        images = f"{len(index)} image{'' if len(index) == 1 else 's'}"
        lines = [f"Predictions for {split} ({images}, threshold {threshold:.4f}): {written['predictions']}"]
        if tiles:
            thinned = int((tiles["n_tiles"] < tiles["tiles_total"]).sum())
            lines.append(
                f"Whole-image verdicts from {int(tiles['n_tiles'].sum())} tiles ({pl_module.settings.tile_pooling} "
                f"pooling)"
                + (f"; {thinned} image(s) had more tiles than data.max_tiles: see tiles_total" if thinned else "")
            )
        if stable is not None:
            uncertain = int((stable["verdict"] == "uncertain").sum())
            lines.append(
                f"Stability ({self.stability} re-shared copies each): {uncertain} of {len(stable)} verdict(s) "
                f"uncertain (more than {self.stability_tolerance:.1%} of the copies flip them); see the verdict, "
                "flip_rate, prob_min and prob_max columns"
            )
        if "submission" in written:
            lines.append(
                f"Kaggle submission: {written['submission']}"
                + (" (0/1 at the threshold: an uncertain verdict keeps its side)" if stable is not None else "")
            )
        if split == "files" and outside_demo_data(getattr(pl_module, "facts", None), [ids[i] for i in index]):
            lines.append(f"deepfake: warning: {DEMO_WARNING}")
        if skipped:
            limit = trainer.limit_predict_batches
            why = (
                f"were not predicted (trainer.limit_predict_batches={limit})"
                if limited
                else "could not be read: a row each in the predictions, with its error"
            )
            # a line of the result, after the progress bar, rather than a Python warning drawn into the bar
            lines.append(
                f"deepfake: warning: {len(skipped)} image(s) {why}: {skipped[:20]}"
                + (" (no submission file written: it needs every id)" if split != "files" else "")
            )
        self.print_result("\n".join(lines))
        if not len(index) and failed:  # nothing could be scored: the command failed (after saying why, per file)
            raise DataError(f"none of the {len(failed)} image(s) could be read; {written['predictions']} says why")

    def _threshold(self, trainer: L.Trainer, pl_module, split: str, probs: np.ndarray) -> float:
        """The tuned threshold, or, for a split listed in ``adapt_splits``, the threshold adapted to
        the AI share that EM estimates from these very predictions."""
        state = pl_module.calibration
        if state is None or split not in self.adapt_splits:
            return pl_module.threshold
        report = state.label_shift(probs, self.shift_tolerance)
        self.print_result(
            f"{split}: estimated AI share {report['ai_share_em']:.3f} (validation: "
            f"{report['source_prior']:.3f}); threshold {pl_module.threshold:.4f} -> "
            f"{report['adapted_threshold']:.4f}"
        )
        if report["images_changed"]:
            rank_zero_warn(
                f"{split}: EM and BBSE disagree (gap {report['disagreement']:.3f}): the images changed, "
                "not only the share of AI images; the adapted threshold may not help."
            )
        return report["adapted_threshold"]
