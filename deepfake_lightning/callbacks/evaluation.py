"""``EvaluationReport`` (after ``test``) and ``PredictionWriter`` (after ``predict``): files people open."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from deepfake_lightning.audit.shortcuts import format_reencode, reencode, reencode_report
from deepfake_lightning.calibration.state import guarantee_line
from deepfake_lightning.callbacks._console import PrintsResults
from deepfake_lightning.callbacks._figures import publish_figure
from deepfake_lightning.checkpoints import update_checkpoint
from deepfake_lightning.cross_dataset import METRICS, TABLE_FILE, cross_dataset_table, markdown
from deepfake_lightning.data.dataset import read_error
from deepfake_lightning.errors import ConfigError, DataError
from deepfake_lightning.evaluation import (
    ROBUSTNESS_GRID,
    format_groups,
    format_report,
    group_report,
    perturbation,
    plot_groups,
    plot_robustness,
    plot_split,
    split_report,
    write_predictions,
)
from deepfake_lightning.evidence import (
    evidence_columns,
    evidence_counts,
    evidence_of,
    format_counts,
    load_trust_anchors,
)
from deepfake_lightning.files import atomic_path, write_json
from deepfake_lightning.localization import check_masks, format_localization, split_localization
from deepfake_lightning.models.outputs import collect_logits
from deepfake_lightning.provenance import DEMO_WARNING, evaluation_record, outside_demo_data
from deepfake_lightning.settings import DEFAULTS
from deepfake_lightning.stability import (
    DEFAULT_TOLERANCE,
    check_stability,
    copy_logits,
    plot_risk_coverage,
    risk_coverage,
    stability_report,
    stability_table,
)


class EvaluationReport(PrintsResults):
    """After ``deepfake test``, writes to the run directory:

    * ``report.json``: per labelled split (validation and test splits), accuracy, precision, recall, F1 (binary
      and macro), human-image and AI-image accuracy and confusion counts, at 0.5 and at the tuned threshold; AUROC,
      average precision, EER, ECE and the number of images;
    * ``predictions/<split>.csv`` (``id,label,prob_ai``), the predictions the report was computed from;
    * ``plots/<split>.png``: ROC, precision-recall and confusion matrix (also in TensorBoard);
    * with ``robustness``: ``robustness.csv`` and ``robustness.png``, metrics on ``robustness_split`` under JPEG
      re-compression, Gaussian blur and down-scaling;
    * for every labelled split whose CSV has a ``mask`` column (``crop`` mode): localization of the edited regions
      (``localization.py``: pointing game, tile AUROC, edited-vs-original AUROC from tiles and from the centre crop)
      in ``report.json`` (``localization``), TensorBoard (``test/<split>/localization/...``) and the printed table;
    * with ``group_by``: per split and per value of that CSV column (e.g. ``generator``), the image count, AUROC of
      the group's AI images against the split's human images and accuracy at the tuned threshold, in
      ``report.json`` (``groups``), ``plots/groups.png``, TensorBoard (``test/<split>/group/<value>/...``) and the
      printed table; the column is added to ``predictions/<split>.csv``.

    It prints a short table at the end.

    * with ``stability`` K: each image also scored on K seeded re-shared copies (``stability.py``): the
      predictions gain ``prob_min, prob_max, flip_rate, verdict``; ``report.json`` per split a ``stability`` entry
      (coverage, accuracy and macro F1 on the certain images against all); ``plots/risk_coverage.png``.
    * with ``evidence`` (default): each image's provenance metadata (``evidence.py``: C2PA, IPTC source type,
      generator metadata, camera) in the ``evidence_*`` columns of the predictions, and per split its counts
      (``report.json``: ``splits.<split>.evidence``, overall and per class).
    * with ``reencode``: every labelled split scored again after re-encoding both classes the same way
      (``audit/shortcuts.py``: RGB, at most ``REENCODE_MAX_SIDE`` pixels, JPEG quality ``REENCODE_QUALITY``); each
      metric before and after in ``report.json`` (``reencode``) and the printed table: a large drop means the
      model relied on the file (format, size, compression), not the image.

    Args:
        robustness: Also measure robustness curves.
        robustness_split: The split they are measured on.
        group_by: A column of the splits' CSVs to break the results down by.
        stability: Re-shared copies per image for the stability check (0: off).
        stability_tolerance: Share of copies that may flip a verdict before it is ``uncertain``, in [0, 1].
        evidence: Read each image's provenance metadata into the predictions and the report.
        trust_anchors: PEM file of the certificates whose C2PA signers count as ``valid`` (others: ``unverified``).
        reencode: Also score every labelled split re-encoded (the model audit for file-format shortcuts).
    """

    def __init__(
        self,
        robustness: bool = False,
        robustness_split: str = "test_v1",
        group_by: str | None = None,
        stability: int = 0,
        stability_tolerance: float = DEFAULT_TOLERANCE,
        evidence: bool = True,
        trust_anchors: str | None = None,
        reencode: bool = False,
    ):
        check_stability(stability, stability_tolerance)
        self.evidence = evidence
        self.trust_anchors = load_trust_anchors(trust_anchors)
        self.reencode = reencode
        self.robustness = robustness
        self.robustness_split = robustness_split
        self.group_by = group_by
        self.stability = stability
        self.stability_tolerance = stability_tolerance
        self.report: dict | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        if self.group_by and hasattr(dm, "split_column"):  # a wrong column fails now, not after the evaluation
            for split in dm.labeled_test_splits():
                dm.split_column(split, self.group_by)
        for split in self._mask_splits(dm):  # likewise a missing or mismatched mask
            problems = check_masks([dm.root / p for p in dm.indexes[split]["path"]], dm.masks(split))
            if problems:
                more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
                listing = "\n  ".join(problems[:20]) + more
                raise DataError(f"{split}: {len(problems)} bad mask(s) in its mask column:\n  {listing}")

    @staticmethod
    def _mask_splits(dm) -> list[str]:
        """Labelled test splits whose CSV names edit masks: scored for localization."""
        if not hasattr(dm, "has_masks") or dm.hparams.get("mode", "crop") != "crop":
            return []
        return [s for s in dm.labeled_test_splits() if dm.has_masks(s)]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        outputs = pl_module.test_outputs.gathered(trainer.world_size)
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        dm, run = trainer.datamodule, Path(log_dir)
        (run / "plots").mkdir(parents=True, exist_ok=True)
        (run / "predictions").mkdir(exist_ok=True)
        report = {"threshold": pl_module.threshold, "calibrated": pl_module.calibration is not None, "splits": {}}
        guarantee = pl_module.calibration.guarantee if pl_module.calibration is not None else {}
        if guarantee:  # the certified bound, beside each split's observed FPR (splits.<split>.at_tuned.fpr)
            report["fpr_guarantee"] = dict(guarantee)
        sections = {"groups": {}, "stability": {}, "curves": {}}
        for split, out in outputs.items():
            if out.labeled:
                report["splits"][split] = self._split_section(trainer, pl_module, split, out, run, sections)
        self._extra_sections(trainer, pl_module, report, sections, run)
        localization = report.get("localization", {})
        cross = cross_dataset_table(report["splits"])
        if len(cross):
            self._publish_cross_dataset(trainer, cross, run)
            report["cross_dataset"] = {
                "rows": cross.replace({np.nan: None}).to_dict(orient="records"),
                "markdown": markdown(cross),
            }
        write_json(run / "report.json", report)
        self.report = report
        settings = {
            "tta_flip": bool(pl_module.hparams.get("tta_flip", DEFAULTS.tta_flip)),
            "eval_views": getattr(dm, "hparams", {}).get("eval_views", DEFAULTS.eval_views),
        }
        if settings["eval_views"] == "tiles":
            settings["tile_pooling"] = pl_module.hparams.get("tile_pooling", DEFAULTS.tile_pooling)
        self._record_in_checkpoint(trainer.ckpt_path, report, run, settings)
        if report["splits"]:
            self._print_report(dm, pl_module, report, sections, localization, cross, run)

    def _split_section(self, trainer, pl_module, split: str, out, run: Path, sections: dict) -> dict:
        """One labelled split: its predictions file, plot, and report entry (with its groups, stability and evidence
        collected into ``sections``)."""
        dm, threshold = trainer.datamodule, pl_module.threshold
        y, probs = out.labels, pl_module.calibrator(out.logits)
        table = pd.DataFrame({"id": np.asarray(dm.split_ids(split))[out.index], "label": y, "prob_ai": probs})
        if self.group_by:
            table[self.group_by] = dm.split_column(split, self.group_by).astype(str).to_numpy()[out.index]
            sections["groups"][split] = group_report(probs, y, table[self.group_by], threshold)
        entry = split_report(probs, y, threshold)
        if self.stability:
            k, tolerance = self.stability, self.stability_tolerance
            stable = copies_table(trainer, pl_module, split, out.index, probs, k, tolerance, threshold)
            table = pd.concat([table, stable], axis=1)
            entry["stability"] = sections["stability"][split] = stability_report(stable, probs, y, threshold, k)
            sections["curves"][split] = (*risk_coverage(stable, probs, y, threshold), entry["stability"]["coverage"])
        if self.evidence:
            found = evidence_of([dm.root / p for p in table["id"]], self.trust_anchors)
            table = table.assign(**evidence_columns(found))
            by_class = {
                name: [e for e, v in zip(found, y, strict=True) if v == c] for name, c in (("human", 0), ("ai", 1))
            }
            entry["evidence"] = evidence_counts(found) | {k: evidence_counts(v) for k, v in by_class.items()}
        with atomic_path(run / "predictions" / f"{split}.csv") as tmp:
            table.to_csv(tmp, index=False)
        fig = plot_split(probs, y, threshold, f"{split}: {len(y)} images")
        publish_figure(trainer, fig, run / "plots" / f"{split}.png", f"evaluation/{split}")
        return entry

    def _extra_sections(self, trainer, pl_module, report: dict, sections: dict, run: Path) -> None:
        """Groups, risk-coverage, robustness, re-encoding and localization, each when asked for or available."""
        if sections["groups"]:
            report["groups"] = {"column": self.group_by, **sections["groups"]}
            self._publish_groups(trainer, sections["groups"], run)
        if sections["curves"]:
            fig = plot_risk_coverage(sections["curves"], self.stability, self.stability_tolerance)
            publish_figure(trainer, fig, run / "plots" / "risk_coverage.png", "evaluation/risk_coverage")
        if self.robustness:
            report["robustness"] = self._robustness(trainer, pl_module, run)
        if self.reencode:
            report["reencode"] = self._reencode(trainer, pl_module, report["splits"])
        localization = {s: self._localization(trainer, pl_module, s) for s in self._mask_splits(trainer.datamodule)}
        if localization:
            report["localization"] = localization
            scalars = {
                f"test/{split}/localization/{k}": v
                for split, r in localization.items()
                for k, v in r.items()
                if isinstance(v, float)
            }
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)

    def _print_report(self, dm, pl_module, report, sections, localization, cross, run: Path) -> None:
        groups, stability = sections["groups"], sections["stability"]
        by_group = f"\n\nBy {self.group_by}:\n{format_groups(groups)}" if groups else ""
        where = (
            f"\n\nLocalization of edited regions (tiles of {dm.hparams.img_size} px, stride "
            f"{dm.hparams.tile_stride or dm.hparams.img_size}, {pl_module.hparams.tile_pooling} pooling):\n"
            f"{format_localization(localization)}"
            if localization
            else ""
        )
        self.print_result(
            f"\nEvaluation (threshold {report['threshold']:.4f}, tuned on validation"
            f"{guarantee_line(pl_module.calibration)}):\n{format_report(report)}"
            f"{by_group}{where}{format_stability(stability, self.stability_tolerance)}"
            + format_counts({s: r["evidence"] for s, r in report["splits"].items() if "evidence" in r})
            + (format_reencode(report["reencode"]) if "reencode" in report else "")
            + (f"\n\nCross-dataset table (tuned threshold):\n{markdown(cross)}" if len(cross) else "")
            + f"\nWritten to {run / 'report.json'}"
        )

    @staticmethod
    def _publish_cross_dataset(trainer: L.Trainer, table: pd.DataFrame, run: Path) -> None:
        """``cross_dataset.csv`` and TensorBoard: a scalar per set and metric, and the Markdown table as text."""
        with atomic_path(run / TABLE_FILE) as tmp:
            table.to_csv(tmp, index=False)
        scalars = {
            f"cross_dataset/{row['set']}/{m}": float(row[m])
            for row in table.to_dict(orient="records")
            for m in METRICS
            if row[m] is not None and not pd.isna(row[m])
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoard renders Markdown tables in its Text tab
                experiment.add_text("cross_dataset", markdown(table), global_step=trainer.global_step)

    def _publish_groups(self, trainer: L.Trainer, groups: dict, run: Path) -> None:
        scalars = {
            f"test/{split}/group/{name}/{k}": r[k]
            for split, table in groups.items()
            for name, r in table.items()
            for k in ("auroc", "acc")
            if r[k] is not None
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        publish_figure(trainer, plot_groups(groups, self.group_by), run / "plots" / "groups.png", "evaluation/groups")

    @staticmethod
    def _record_in_checkpoint(ckpt_path: str | None, report: dict, run: Path, settings: dict) -> None:
        """Adds this evaluation's per-split summary to the evaluated checkpoint's provenance (an export folder is
        left as it is: it is a published artifact)."""
        if not report["splits"] or not ckpt_path or not Path(ckpt_path).is_file():
            return

        def record(ckpt: dict) -> None:
            provenance = ckpt.setdefault("provenance", {})
            provenance["test"] = evaluation_record(report)
            provenance["test_settings"] = settings  # test-time augmentation used for these figures
            provenance["test_report"] = str(run.resolve() / "report.json")

        try:
            update_checkpoint(ckpt_path, record)
        except OSError as e:  # e.g. a read-only checkpoint: the report itself is written
            rank_zero_warn(f"could not add the test results to {ckpt_path}: {e}")

    def _reencode(self, trainer: L.Trainer, pl_module, before: dict) -> dict:
        """Each labelled test split scored again re-encoded (rank 0): each metric before and after."""
        dm = trainer.datamodule
        results = {}
        for split in dm.labeled_test_splits():
            loader = dm.loader(split, perturb=reencode, distributed=False)
            logits, labels = collect_logits(pl_module, loader, trainer)
            after = split_report(pl_module.calibrator(logits), labels, pl_module.threshold)
            results[split] = reencode_report(before[split], after)
        return results

    @staticmethod
    def _localization(trainer: L.Trainer, pl_module, split: str) -> dict:
        """Scores a split with masks as tiles and as centre crops, whatever views the run evaluates (rank 0)."""
        dm = trainer.datamodule
        return split_localization(
            pl_module,
            dm.loader(split, eval_views="tiles", distributed=False),
            dm.loader(split, eval_views=1, distributed=False),
            dm.masks(split),
            dm.indexes[split]["label"].to_numpy(),
            trainer.precision_plugin.forward_context(),
        )

    def _robustness(self, trainer: L.Trainer, pl_module, run: Path) -> str:
        dm = trainer.datamodule
        split = self.robustness_split
        if split not in dm.labeled_test_splits():
            raise ConfigError(
                f"report.robustness_split={split!r} is not a labelled split; labelled: {dm.labeled_test_splits()}"
            )
        rows, clean_pred = [], None
        for kind, levels in ROBUSTNESS_GRID.items():
            for level in levels:
                logits, labels = collect_logits(pl_module, dm.loader(split, perturb=perturbation(kind, level)))
                probs = pl_module.calibrator(logits)
                pred = probs >= pl_module.threshold
                if clean_pred is None:
                    clean_pred = pred  # the first level of the first kind is the identity
                m = split_report(probs, labels, pl_module.threshold)
                t = m["at_tuned"]
                rows.append(
                    {
                        "perturbation": kind,
                        "level": level,
                        "auroc": m["auroc"],
                        "ap": m["ap"],
                        "acc": t["acc"],
                        "f1": t["f1"],
                        "acc_human": t["acc_human"],
                        "acc_ai": t["acc_ai"],
                        "ece": m["ece"],
                        "changed_predictions": float(np.mean(pred != clean_pred)),
                    }
                )
        table = pd.DataFrame(rows)
        with atomic_path(run / "robustness.csv") as tmp:
            table.to_csv(tmp, index=False)

        fig = plot_robustness(table)
        fig.suptitle(f"Robustness on {split}", y=1.02)
        publish_figure(trainer, fig, run / "robustness.png", "evaluation/robustness", bbox_inches="tight")
        # levels as given (JPEG quality 100, scale 0.75), the metrics to 4 decimals
        shown = table.assign(level=table["level"].map(lambda v: f"{v:g}"))
        self.print_result(
            f"\nRobustness on {split}:\n{shown.to_string(index=False, float_format=lambda v: f'{v:.4f}')}"
        )
        return str(run / "robustness.csv")


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
                f"Whole-image verdicts from {int(tiles['n_tiles'].sum())} tiles ({pl_module.hparams.tile_pooling} "
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


def copies_table(
    trainer, pl_module, split: str, index: np.ndarray, probs: np.ndarray, k: int, tolerance: float, threshold: float
):
    """The stability columns (``stability.py``) of a split's images ``index`` (dataset order) with calibrated
    ``probs``: each image's k seeded re-shared copies (made from its pixels decoded once) scored on this process."""
    from torch.utils.data import DataLoader, Subset

    from deepfake_lightning.data.dataset import collate_skip_bad

    dm = trainer.datamodule
    n = len(dm.split_ids(split))
    # the images of ``index`` only (e.g. under trainer.limit_test_batches), in dataset order, each decoded once
    dataset = Subset(dm.dataset(split, copies=k), sorted(int(i) for i in index))
    batch = max(1, dm.images_per_batch() // k)  # k copies per image: about the usual number of views per pass
    loader = DataLoader(dataset, batch_size=batch, num_workers=dm.num_workers, collate_fn=collate_skip_bad)
    logits = copy_logits(pl_module, loader, n, k, trainer.precision_plugin.forward_context())[index]
    copy_probs = np.full(logits.shape, np.nan)
    finite = np.isfinite(logits)
    copy_probs[finite] = pl_module.calibrator(logits[finite])
    return stability_table(probs, copy_probs, threshold, tolerance)


def format_stability(reports: dict[str, dict], tolerance: float) -> str:
    """The printed stability table: coverage and certain-vs-all accuracy per split."""
    if not reports:
        return ""
    rows = [
        {
            "split": split,
            "copies": r["copies"],
            "coverage": r["coverage"],
            "uncertain": r["n_uncertain"],
            "acc certain": r["certain"]["acc"] if r["certain"] else None,
            "acc all": r["all"]["acc"],
            "macroF1 certain": r["certain"]["f1_macro"] if r["certain"] else None,
            "macroF1 all": r["all"]["f1_macro"],
        }
        for split, r in reports.items()
    ]
    table = pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")
    heading = f"Stability under re-sharing (uncertain: more than {tolerance:.1%} of the copies flip the verdict)"
    return f"\n\n{heading}:\n{table}"
