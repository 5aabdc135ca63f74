from deepfake_lightning.callbacks.calibration import Calibration, collect_logits, fit_calibration, write_calibration
from deepfake_lightning.callbacks.gradcam import GradCamExport
from deepfake_lightning.callbacks.metrics_json import MetricsJson

__all__ = ["Calibration", "GradCamExport", "MetricsJson", "collect_logits", "fit_calibration", "write_calibration"]
