"""Result lines printed once Lightning's progress bars have closed, so that they are not drawn into a bar."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class PrintsResults(Callback):
    """Base for callbacks that report results: ``print_result`` queues a line, ``teardown`` (after every progress bar
    has closed) prints the queue on rank 0. Subclasses that override ``teardown`` call ``super().teardown``.

    Lightning tears callbacks down in list order and appends its own progress bar after the user's callbacks. A
    ``TQDMProgressBar`` has closed its bars by then; a ``RichProgressBar`` (Lightning's default when ``rich`` is
    installed) still holds a live display, which would redraw over lines printed beneath it: they vanished from the
    terminal. So the bar's own ``teardown`` (which stops the display and may run twice) runs first.
    """

    def print_result(self, text: str) -> None:
        self.__dict__.setdefault("_pending_results", []).append(text)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        pending = self.__dict__.pop("_pending_results", [])
        if pending and trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.teardown(trainer, pl_module, stage)
        for text in pending:
            rank_zero_info(text)
