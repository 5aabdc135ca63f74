"""``deepfake serve``: a detector behind an HTTP API with server-side batching (LitServe), and a web page.

* ``uploads.py``: the API process: ``GET /`` (the page), upload limits and content types for ``POST /predict``;
* ``worker.py``: the inference workers: decoding, batching, logits on PyTorch or ONNX Runtime, calibration,
  Grad-CAM overlays;
* ``server.py``: ``build_server`` and the command;
* ``page.html``: the page, self-contained (no external scripts, styles or fonts: it works offline).
"""

from deepfake_lightning.serving.server import build_server, serve_main

__all__ = ["build_server", "serve_main"]
