"""``EvaluationReport``: after ``deepfake test``, the report, predictions and plots people open, and the console's table
(the extra passes it runs when asked for are callbacks/passes.py)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

from deepfake_lightning.audit.shortcuts import format_reencode
from deepfake_lightning.calibration.state import guarantee_line
from deepfake_lightning.callbacks._console import PrintsResults
from deepfake_lightning.callbacks._figures import publish_figure
from deepfake_lightning.callbacks.passes import (
    copies_table,
    format_stability,
    localization_pass,
    reencode_pass,
    robustness_table,
)
from deepfake_lightning.cross_dataset import METRICS, TABLE_FILE, cross_dataset_table, markdown
from deepfake_lightning.errors import DataError
from deepfake_lightning.evaluation import (
    format_groups,
    format_report,
    group_report,
    plot_groups,
    plot_robustness,
    plot_split,
    split_report,
)
from deepfake_lightning.evidence import (
    evidence_columns,
    evidence_counts,
    evidence_of,
    format_counts,
    load_trust_anchors,
)
from deepfake_lightning.files import atomic_path, write_json
from deepfake_lightning.localization import check_masks, format_localization
from deepfake_lightning.provenance import evaluated_model
from deepfake_lightning.settings import DEFAULTS
from deepfake_lightning.stability import (
    DEFAULT_TOLERANCE,
    check_stability,
    plot_risk_coverage,
    risk_coverage,
    stability_report,
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
        if not hasattr(dm, "has_masks") or dm.inference_settings.mode != "crop":
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
        # Which model file was evaluated, and how: the model card and `deepfake export` gather a run's results from
        # its evaluation folders by this hash (provenance.recorded_evaluation); the model file is never rewritten.
        # (an export folder's weights are loaded by the CLI, not by Lightning: its facts name the folder)
        evaluated = trainer.ckpt_path or getattr(pl_module.facts, "source", None)
        if evaluated and Path(evaluated).exists():
            report["model"] = evaluated_model(evaluated)
        views, model = getattr(dm, "inference_settings", DEFAULTS), pl_module.settings
        report["settings"] = {"tta_flip": model.tta_flip, "eval_views": views.eval_views}
        if views.tiled:
            report["settings"]["tile_pooling"] = model.tile_pooling
        write_json(run / "report.json", report)
        self.report = report
        if report["splits"]:
            self._print_report(dm, pl_module, report, sections, localization, cross, run)

    def _split_section(self, trainer, pl_module, split: str, out, run: Path, sections: dict) -> dict:
        """One labelled split: its predictions file, plot, and report entry (with its groups, stability and evidence
        collected into ``sections``)."""
        dm, threshold = trainer.datamodule, pl_module.threshold
        y, probs = out.labels, pl_module.scorer.probs(out.logits)
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
            report["reencode"] = reencode_pass(trainer, pl_module, report["splits"])
        localization = {s: localization_pass(trainer, pl_module, s) for s in self._mask_splits(trainer.datamodule)}
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
            f"\n\nLocalization of edited regions (tiles of {dm.inference_settings.img_size} px, stride "
            f"{dm.inference_settings.stride}, {pl_module.settings.tile_pooling} pooling):\n"
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

    def _robustness(self, trainer: L.Trainer, pl_module, run: Path) -> str:
        split = self.robustness_split
        table = robustness_table(trainer, pl_module, split)
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
