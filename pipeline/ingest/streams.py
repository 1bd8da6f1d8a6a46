"""What a video's first video stream shows, read with PyAV from its header and first decoded frame:
the displayed size, rotation, codec and pixel format. Shared by the probe stage (pipeline/ingest/probe.py)
and the decoder (pipeline/features/decoding/decode.py), which keep their own opening and error types.

`rotation`: degrees (0, 90, 180, 270) from the display matrix, counter-clockwise, as FFmpeg's
`av_display_rotation_get` reports it (the frame's `rotation`; else the stream's `rotate` tag; else
0). `width` / `height` are the displayed size, i.e. AFTER rotation (swapped for 90 / 270 degrees).
"""
from __future__ import annotations

import math


def error_text(exc: BaseException) -> str:
    """An FFmpeg / PyAV error as one line (its type name when it has no message)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _rotation_from_frame(frame) -> int | None:
    try:
        rot = frame.rotation
    except Exception:  # noqa: BLE001 - older PyAV without the property
        return None
    if rot is None or (isinstance(rot, float) and math.isnan(rot)):
        return None
    return int(round(float(rot) / 90.0)) * 90 % 360


def _rotation_from_tag(stream) -> int | None:
    tag = (stream.metadata or {}).get("rotate")
    if tag is None:
        return None
    try:  # FFmpeg maps `rotate=R` to a display matrix that reads back as R
        return int(round(float(tag) / 90.0)) * 90 % 360
    except ValueError:
        return None


def display_info(stream, frame) -> dict:
    """{width, height, rotation, codec, pix_fmt} of a PyAV video stream, given its first decoded frame."""
    cc = stream.codec_context
    rotation = _rotation_from_frame(frame)
    if rotation is None:
        rotation = _rotation_from_tag(stream) or 0
    width = int(cc.width or frame.width)
    height = int(cc.height or frame.height)
    if rotation in (90, 270):
        width, height = height, width
    return {
        "width": width,
        "height": height,
        "rotation": int(rotation),
        "codec": cc.name,
        "pix_fmt": cc.pix_fmt or (frame.format.name if frame is not None else None),
    }
