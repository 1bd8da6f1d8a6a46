"""One demo video from its parameters: render the scene, distort it, encode it. Encoders run single-threaded
and bit-exact so the same parameters give the same bytes."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.ingest.demo.distortions import FrameDistorter, content_times
from pipeline.ingest.demo.labels import video_rng
from pipeline.ingest.demo.scenes import Scene


def _encoder_options(codec: str, crf: float, fps: int) -> tuple[str, dict]:
    """(encoder name, options) for a codec: one thread, a key frame every 2 s."""
    g = str(2 * fps)
    if codec == "h264":
        return "libx264", {"preset": "superfast", "crf": f"{crf:.1f}", "threads": "1", "g": g}
    if codec == "vp9":
        return "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": f"{int(crf)}", "b": "0",
                              "threads": "1", "row-mt": "0", "g": g}
    if codec == "ffv1":
        return "ffv1", {"threads": "1"}
    if codec == "hevc":
        return "libx265", {"preset": "ultrafast", "crf": f"{crf:.1f}",
                           "x265-params": f"pools=none:frame-threads=1:log-level=error:keyint={g}"}
    raise ValueError(codec)


def render_video(params: dict, path: Path) -> None:
    """Render, distort and encode one video to `path` (written to a temp name, then renamed)."""
    rng = video_rng(params["seed"], params["index"], 1)
    w, h, fps = params["width"], params["height"], params["fps"]
    scene = Scene(params["content"], rng, w, h, params["n_frames"])
    distort = FrameDistorter(params, video_rng(params["seed"], params["index"], 2))
    times = content_times(params, video_rng(params["seed"], params["index"], 3))
    codec_name, options = _encoder_options(params["codec"], params["crf"], fps)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), "w", format={"mkv": "matroska"}.get(params["container"], params["container"]),
                     options={"fflags": "+bitexact"}) as out:
            stream = out.add_stream(codec_name, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.thread_count = 1
            stream.options = options
            last_t, last = None, None
            for i, t in enumerate(times):
                if t != last_t:  # repeated content time = the very same frame (stutter, drops)
                    img = distort(scene.render(float(t)))
                    last = np.ascontiguousarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
                    last_t = t
                frame = av.VideoFrame.from_ndarray(last, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
