"""Writes the final value of every logged metric to ``metrics.json`` in the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L

from deepfake_lightning.callbacks._console import PrintsResults
from deepfake_lightning.files import atomic_path


class MetricsJson(PrintsResults):
    """At the end of fit, validate and test, merges ``trainer.callback_metrics`` into ``<log_dir>/metrics.json``.

    Keys are the logged names (``val/auroc``, ``test/test_v1/f1``...), values plain floats; a later stage in the
    same run directory adds its keys to the file. The file is written to a temporary name and then renamed,
    so a crash mid-write never leaves a truncated file behind.
    """

    def __init__(self, filename: str = "metrics.json"):
        self.filename = filename

    def _write(self, trainer: L.Trainer) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None or trainer.sanity_checking:
            return
        path = Path(log_dir) / self.filename
        values = json.loads(path.read_text()) if path.is_file() else {}
        for name, v in trainer.callback_metrics.items():
            if v.numel() == 1:
                f = float(v)
                values[name] = f if math.isfinite(f) else None  # JSON has no NaN
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dict(sorted(values.items())), indent=2))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # After every callback's on_fit_end (e.g. Calibration's figures), whatever their order.
        if stage == "fit" and not trainer.interrupted:
            self._write(trainer)
        super().teardown(trainer, pl_module, stage)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer)
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
            if "val/auroc" in m:  # `deepfake validate`: one line, after the progress bar
                where = f"; written to {Path(trainer.log_dir) / self.filename}" if trainer.log_dir else ""
                n = int(sum(m.get(f"val/{k}", 0) for k in ("tp", "tn", "fp", "fn")))
                self.print_result(
                    f"Validation ({n} images): AUROC {m['val/auroc']:.4f}, F1 {m.get('val/f1', float('nan')):.4f} "
                    "and accuracy "
                    f"{m.get('val/acc', float('nan')):.4f} at 0.5, loss {m.get('val/loss', float('nan')):.4f}{where}"
                )

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer)
