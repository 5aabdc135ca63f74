from deepfake_lightning.callbacks.calibration import Calibration
from deepfake_lightning.callbacks.checkpoint import RunCheckpoint
from deepfake_lightning.callbacks.evaluation import EvaluationReport, PredictionWriter
from deepfake_lightning.callbacks.gradcam import GradCamExport
from deepfake_lightning.callbacks.metrics_json import MetricsJson

__all__ = [
    "Calibration",
    "EvaluationReport",
    "GradCamExport",
    "MetricsJson",
    "PredictionWriter",
    "RunCheckpoint",
]
