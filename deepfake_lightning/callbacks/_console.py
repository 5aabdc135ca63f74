"""Result lines printed once Lightning's progress bars have closed, so that they are not drawn into a bar."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class PrintsResults(Callback):
    """Base for callbacks that report results: ``print_result`` queues a line, ``teardown`` (after every progress bar
    has closed) prints the queue on rank 0. Subclasses that override ``teardown`` call ``super().teardown``."""

    def print_result(self, text: str) -> None:
        self.__dict__.setdefault("_pending_results", []).append(text)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for text in self.__dict__.pop("_pending_results", []):
            rank_zero_info(text)
