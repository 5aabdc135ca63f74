from deepfake_lightning.data.datamodule import DeepfakeDataModule
from deepfake_lightning.data.dataset import BadImageError, ImageDataset, load_image
from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset
from deepfake_lightning.data.index import DataError, read_index
from deepfake_lightning.data.transforms import create_transform

__all__ = [
    "BadImageError",
    "DataError",
    "DeepfakeDataModule",
    "DemoSpec",
    "ImageDataset",
    "build_demo_dataset",
    "create_transform",
    "load_image",
    "read_index",
]
