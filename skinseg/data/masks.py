"""Reading an attribute mask, the one home of its checks: :func:`read_mask` (PIL, every check, the error) and
:class:`MaskReader` (OpenCV, many masks fast, the same result: what scoring a submission uses). Torch-free."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from skinseg.errors import DataError


def read_mask(path: Path, expected_hw: tuple[int, int], what: str = "mask") -> tuple[np.ndarray, int]:
    """Decode one attribute mask as bool HxW; returns it and the count of pixels that were not 0 or 255.

    A mask whose values are only 0 and 1 (saved as 0/1 instead of 0/255) is an error: read at > 127 it would
    be empty, silently.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("L")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{what} {path} is missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{what} {path} is corrupt or truncated ({e}); re-extract it") from None
    if mode not in ("L", "1", "P") or arr.ndim != 2:
        raise DataError(
            f"{what} {path} has mode {mode} (shape {arr.shape}); expected a single-channel 8-bit (L) PNG with "
            "values 0/255 — convert it, e.g. Image.open(p).convert('L')"
        )
    if mode == "1":
        arr = arr.astype(np.uint8) * 255
    if arr.shape != expected_hw:
        raise DataError(
            f"{what} {path} is {arr.shape[1]}x{arr.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]} "
            "(width x height); masks must have their image's size"
        )
    top = int(arr.max()) if arr.size else 0
    if top == 1:
        raise DataError(
            f"{what} {path} holds only the values 0 and 1: ISIC masks are 0/255, and read as such this one would be "
            "empty. Save it as 0/255 (e.g. Image.fromarray(mask.astype('uint8') * 255))"
        )
    odd = int(np.count_nonzero((arr != 0) & (arr != 255)))
    return arr > 127, odd


_PNG = b"\x89PNG\r\n\x1a\n"


class MaskReader:
    """Reads masks as :func:`read_mask` does (bool, > 127), decoding a file content that is an empty mask once.

    Masks are decoded by OpenCV, which releases the GIL; anything it does not decode to an 8-bit single-channel
    array, and any mask that fails a check, goes through :func:`read_mask`, for its result or its error.
    """

    def __init__(self):
        self.empty: dict[bytes, tuple[int, int]] = {}  # file content -> size, for masks without a positive pixel

    def read(self, path: Path, hw: tuple[int, int] | None, what: str) -> tuple[np.ndarray | None, tuple[int, int], int]:
        """The mask as bool H x W (None when it is empty), its (height, width) and its count of positive pixels;
        ``hw`` None takes the mask's own size."""
        try:
            data = path.read_bytes()
        except OSError:
            data = b""  # read_mask names the file in its error
        size = self.empty.get(data)
        if size is not None and size == (hw or size):
            return None, size, 0
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data.startswith(_PNG) else None
        plain = arr is not None and arr.ndim == 2 and arr.dtype == np.uint8  # what PIL reads as mode L or 1
        hw = hw or (arr.shape if plain else png_hw(path))
        if plain and arr.shape == hw:
            mask = arr > 127
            positives = np.count_nonzero(mask)
            if positives:
                return mask, hw, positives
            if not arr.any():
                self.empty[data] = hw
                return None, hw, 0
        # not an 8-bit single-channel PNG of its image's size, or no value above 127 but some above 0 (0/1 masks are
        # an error): read_mask gives the result or the error
        mask = read_mask(path, hw, what)[0]
        positives = np.count_nonzero(mask)
        return (mask if positives else None), hw, positives


def png_hw(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]
