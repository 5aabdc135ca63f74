"""One way for callbacks to publish a figure: a PNG in the run directory and an image in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt

from deepfake_lightning.files import atomic_path


def publish_figure(trainer: L.Trainer, fig, path: Path, tag: str, step: int | None = None, **savefig) -> None:
    """Saves ``fig`` to ``path`` (creating its folder), adds it to every logger that takes figures
    (TensorBoard's Images tab) under ``tag``, and closes it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **{"dpi": 100, **savefig})
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(tag, fig, global_step=trainer.global_step if step is None else step, close=False)
    plt.close(fig)
