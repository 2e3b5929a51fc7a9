"""Data sets: the paper's synthetic 2-D sets, image sets (scikit-learn digits, torchvision), preprocessing
per leaf type, and an HDF5 cache of decoded images.

Modules: :mod:`.synthetic` (2-D sets and their exact densities), :mod:`.images` (decoding image files),
:mod:`.preprocessing` (invertible maps to model space), :mod:`.cache` (HDF5), :mod:`.dataset` (the record),
:mod:`.loading` (``load_dataset``), :mod:`.custom` (a user's data set from a path).
"""

from .custom import CustomDataError, load_custom
from .dataset import Dataset, DatasetNotFoundError, model_scale
from .images import IMAGE_DATASETS
from .loading import DATASETS, LEAVES, event_shape_of, load_dataset
from .preprocessing import Binarize, Counts, Dequantize, Identity, Preprocessing, Standardize
from .synthetic import SYNTHETIC_DATASETS, GaussianMixture2D

__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "LEAVES",
    "SYNTHETIC_DATASETS",
    "Binarize",
    "Counts",
    "CustomDataError",
    "Dataset",
    "DatasetNotFoundError",
    "Dequantize",
    "GaussianMixture2D",
    "Identity",
    "Preprocessing",
    "Standardize",
    "event_shape_of",
    "load_custom",
    "load_dataset",
    "model_scale",
]
