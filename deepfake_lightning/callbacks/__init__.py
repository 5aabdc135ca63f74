from deepfake_lightning.callbacks.calibration import Calibration
from deepfake_lightning.callbacks.checkpoint import RunCheckpoint
from deepfake_lightning.callbacks.evaluation import EvaluationReport
from deepfake_lightning.callbacks.gradcam import GradCamExport
from deepfake_lightning.callbacks.metrics_json import MetricsJson
from deepfake_lightning.callbacks.predictions import PredictionWriter

__all__ = [
    "Calibration",
    "EvaluationReport",
    "GradCamExport",
    "MetricsJson",
    "PredictionWriter",
    "RunCheckpoint",
]
