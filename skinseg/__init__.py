"""skinseg: ISIC 2018 Task 2 lesion-attribute segmentation with U-Net variants."""
import os

# albumentations checks PyPI for a newer version at import; never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from skinseg.data.isic import ATTRIBUTES  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ATTRIBUTES", "__version__"]
