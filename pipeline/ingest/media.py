"""What an item is, from its file name: a video or a still image.

The one place that decides it (`media_of`), so the manifest, the decoder (a still is read once into
one key frame), the prompts ("image" instead of "video") and `lmmvqa score` agree. No heavy imports:
decode worker processes import it.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                    ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".y4m")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MEDIA = ("video", "image")


def is_video_file(name) -> bool:
    return Path(str(name)).suffix.lower() in VIDEO_EXTENSIONS and not Path(str(name)).name.startswith(".")


def is_image_file(name) -> bool:
    return Path(str(name)).suffix.lower() in IMAGE_EXTENSIONS and not Path(str(name)).name.startswith(".")


def media_of(path) -> str:
    """image for a file with an image extension (decoded as one still, asked about as an image), else video."""
    return "image" if is_image_file(path) else "video"


def item_id(name: str) -> str:
    """An item's id from its file name: the name without its video or image extension."""
    suffix = PurePosixPath(name).suffix.lower()
    return name[: -len(suffix)] if suffix in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS else name
