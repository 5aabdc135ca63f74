from deepfake_lightning.callbacks.metrics_json import MetricsJson

__all__ = ["MetricsJson"]
