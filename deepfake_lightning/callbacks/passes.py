"""The extra inference passes of ``deepfake test``, beyond the test loop itself, each run on rank 0 when asked for:
robustness curves, re-encoded splits (the file-format shortcut audit), localization of edited regions, and the
re-shared copies of the stability check (also used by ``deepfake predict``)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd

from deepfake_lightning.audit.shortcuts import reencode, reencode_report
from deepfake_lightning.errors import ConfigError
from deepfake_lightning.evaluation import ROBUSTNESS_GRID, perturbation, split_report
from deepfake_lightning.localization import split_localization
from deepfake_lightning.models.outputs import collect_logits
from deepfake_lightning.stability import copy_logits, stability_table


def robustness_table(trainer: L.Trainer, pl_module, split: str) -> pd.DataFrame:
    """Metrics on ``split`` under each perturbation of ``ROBUSTNESS_GRID`` (JPEG, blur, down-scaling), and the
    share of predictions each level changes."""
    dm = trainer.datamodule
    if split not in dm.labeled_test_splits():
        raise ConfigError(
            f"report.robustness_split={split!r} is not a labelled split; labelled: {dm.labeled_test_splits()}"
        )
    rows, clean_pred = [], None
    for kind, levels in ROBUSTNESS_GRID.items():
        for level in levels:
            logits, labels = collect_logits(pl_module, dm.loader(split, perturb=perturbation(kind, level)))
            probs, pred = pl_module.scorer.verdicts(logits)
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
    return pd.DataFrame(rows)


def reencode_pass(trainer: L.Trainer, pl_module, before: dict) -> dict:
    """Each labelled test split scored again re-encoded (rank 0): each metric before and after."""
    dm = trainer.datamodule
    results = {}
    for split in dm.labeled_test_splits():
        loader = dm.loader(split, perturb=reencode, distributed=False)
        logits, labels = collect_logits(pl_module, loader, trainer)
        after = split_report(pl_module.scorer.probs(logits), labels, pl_module.threshold)
        results[split] = reencode_report(before[split], after)
    return results


def localization_pass(trainer: L.Trainer, pl_module, split: str) -> dict:
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
    copy_probs[finite] = pl_module.scorer.probs(logits[finite])
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
