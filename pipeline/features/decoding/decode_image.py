"""Decode a still image (JPEG, PNG, BMP, TIFF, WebP) into the one key frame a still is.

`sample_image(path, key_size, chunk_frames, chunk_size, keyframe_mode, fragment_grid) -> DecodedVideo`
reads the file ONCE with Pillow (EXIF orientation applied, as the video decoder applies a video's
rotation; any mode converted to 8-bit RGB) and makes its one key frame with the same view as a video's
key frames (`views.spatial_view`: `stretch`, `crop`, `fragments` cut at the image's native
resolution, or `native`: the image itself, shrunk only where its short side exceeds the cap). A still has no motion: it gets NO chunks (`chunks` has 0 rows), and the extractor gives it
the defined motion row of a still (`Extractor.encode_staged`: zeros, "no motion") instead of running the
motion encoder on a fake clip. `meta["still"]` is True; the feature store records it per item.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.core.settings import NATIVE_MAX_SHORT_SIDE
from pipeline.features.decoding.sampling import DecodedVideo, DecodeError
from pipeline.features.decoding.views import spatial_view


def read_image(path) -> tuple[np.ndarray, dict]:
    """uint8 [h, w, 3] RGB pixels of an image file (displayed orientation) and its facts."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            img = ImageOps.exif_transpose(img)
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy (torch reads it)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"not a readable image: {type(exc).__name__}: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise DecodeError(f"image of shape {rgb.shape}: no pixels")
    return np.ascontiguousarray(rgb), {"codec": str(fmt).lower() if fmt else None, "pix_fmt": mode}


def sample_image(path, key_size: int = 224, chunk_frames: int = 32, chunk_size: int = 224,
                 keyframe_mode: str = "stretch", fragment_grid: int = 7,
                 native_max_short_side: int = NATIVE_MAX_SHORT_SIDE) -> DecodedVideo:
    """One key frame of a still image; no motion chunks (see the module docstring)."""
    t0 = time.perf_counter()
    rgb, facts = read_image(path)
    key = spatial_view(rgb[None], key_size, keyframe_mode, fragment_grid, native_max_short_side)
    h, w = rgb.shape[:2]
    meta = {
        "still": True, "duration": 0.0, "fps": None, "n_frames": 1, "width": int(w), "height": int(h),
        "rotation": 0, **facts, "vfr": None, "backend": "pillow", "decoder_threads": 1,
        "n_keyframes": 1, "n_seconds": 1, "decode_s": round(time.perf_counter() - t0, 4),
    }
    chunks = np.zeros((0, int(chunk_frames), int(chunk_size), int(chunk_size), 3), np.uint8)
    return DecodedVideo(np.ascontiguousarray(key), chunks, meta, np.zeros((0, int(chunk_frames)), np.int64))
