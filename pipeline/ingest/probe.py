"""Probe stage: container and video-stream metadata of each video of a manifest shard (PyAV).

`lmmvqa probe --manifest M --videos DIR [--shard N] --out FILE.csv [--failures F.csv] [--deadline S]` writes FILE.csv
(`PROBE_COLUMNS`, one row per file that opened) and the failures table (default FILE.failures.csv) (`id, path, stage, error`), each atomically.

Each file is read in a child process (`deadline.CallInProcess`) that is killed when it takes longer than
the deadline (`--deadline`, default `sampling.decode_deadline.base_s`'s default: a damaged stream can make
FFmpeg loop forever); such a file is a failure with stage `timeout` ("timed out after S s") and the
next file goes on. A crash of that process is a failure of its file too.

`probe_video(path) -> dict` with keys `PROBE_KEYS`:

    duration   seconds (video stream duration; the container's when the stream has none)
    fps        average frame rate (frames / s)
    vfr        True when the frame timestamps of the first ~120 packets are not evenly spaced, or the
               stream's average rate differs from its base rate by more than 1 %
    n_frames   frames in the stream (container count; else round(duration * fps))
    width, height  display size, i.e. AFTER rotation (swapped for 90 / 270 degrees; pipeline/ingest/streams.py
               reads these, rotation, codec and pix_fmt for the probe and the decoder alike)
    rotation   degrees (0, 90, 180, 270) from the display matrix, counter-clockwise, as FFmpeg's
               `av_display_rotation_get` reports it: the displayed picture is the decoded one turned
               counter-clockwise by `rotation` = `np.rot90(frame, k=rotation // 90)` (see `to_display`).
               PyAV does not apply it; decord and the ffmpeg CLI do.
    codec, pix_fmt, has_video

Audio-only files return `has_video=False` (other keys None). Files that cannot be opened or whose
first video frame cannot be decoded raise `ProbeError` carrying the stage and FFmpeg's message.
`probe_shard` lists files without a video stream in the table (has_video False) AND in failures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import pandas as pd

from pipeline.core import atomic, paths
from pipeline.core.errors import FAILURE_COLUMNS, UserError
from pipeline.core.deadline import CallInProcess, ChildDied, DeadlineExceeded, DecodeDeadline
from pipeline.ingest.manifest import read_manifest
from pipeline.ingest.streams import display_info, error_text

PROBE_KEYS = ["duration", "fps", "vfr", "n_frames", "width", "height", "rotation", "codec", "pix_fmt", "has_video"]
PROBE_COLUMNS = ["id", "path", *PROBE_KEYS]
VFR_PACKETS = 120
REORDER_SLACK = 16


class ProbeError(Exception):
    """A video that cannot be probed; `stage` is open / stream / decode / missing."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _timestamps_uneven(pts: list[int], time_base) -> bool:
    """True when sorted pts deltas vary by more than timestamp rounding can explain."""
    # packets come in decode order: the last few of a prefix may still miss B-frames shown earlier
    pts = sorted(set(pts))
    if len(pts) > 3 * REORDER_SLACK:
        pts = pts[:-REORDER_SLACK]
    if len(pts) < 4:
        return False
    d = np.diff(np.asarray(pts, dtype=np.float64))
    med = float(np.median(d))
    if med <= 0:
        return False
    # rounding to the time base moves a delta by at most 1 tick (2 with re-ordering); allow 5 % besides
    tol = max(2.0, 0.05 * med)
    return bool(np.max(np.abs(d - med)) > tol)


def probe_video(path) -> dict:
    """Metadata of one video file (see the module docstring). Raises ProbeError for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError("missing", f"file not found: {path}")
    if path.stat().st_size == 0:
        raise ProbeError("open", "empty file (0 bytes)")
    try:
        container = av.open(str(path), "r")
    except Exception as exc:  # noqa: BLE001 - FFmpeg raises many types; keep its message
        raise ProbeError("open", error_text(exc)) from None
    try:
        return _probe_open(container)
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - broken headers surface as many FFmpeg error types
        raise ProbeError("stream", error_text(exc)) from None
    finally:
        container.close()


def _probe_open(container) -> dict:
    if not container.streams.video:
        return {**{k: None for k in PROBE_KEYS}, "has_video": False}
    stream = container.streams.video[0]
    tb = stream.time_base
    avg = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(avg) if avg else None
    duration = None
    if stream.duration is not None and tb:
        duration = float(stream.duration * tb)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    n_frames = int(stream.frames or 0)
    if n_frames <= 0 and duration and fps:
        n_frames = int(round(duration * fps))
    vfr = False
    base = stream.base_rate or stream.guessed_rate
    if avg and base and abs(float(avg) - float(base)) > 0.01 * float(base):
        vfr = True

    # demux the first packets (timestamps) and decode the first frame (readability, rotation)
    pts: list[int] = []
    frame = None
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size:
                pts.append(int(packet.pts))
            if frame is None:
                for f in packet.decode():
                    frame = f
                    break
            if len(pts) >= VFR_PACKETS and frame is not None:
                break
    except Exception as exc:  # noqa: BLE001
        if frame is None:
            raise ProbeError("decode", error_text(exc)) from None
    if frame is None:
        raise ProbeError("decode", "no video frame could be decoded")
    if not vfr and tb:
        vfr = _timestamps_uneven(pts, tb)
    shown = display_info(stream, frame)
    if duration is None and fps and n_frames:
        duration = n_frames / fps
    return {
        "duration": round(duration, 6) if duration is not None else None,
        "fps": round(fps, 6) if fps else None,
        "vfr": bool(vfr),
        "n_frames": n_frames or None,
        **shown,  # width, height, rotation, codec, pix_fmt
        "has_video": True,
    }


def to_display(frame: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame (H, W, ...) turned as the display matrix says (`rotation` from probe_video)."""
    k = (int(rotation) // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=k)) if k else frame


def _probe_answer(path) -> tuple:
    """probe_video in the child process: ("ok", info) or ("error", stage, message)."""
    try:
        return ("ok", probe_video(path))
    except ProbeError as exc:
        return ("error", exc.stage, str(exc))


def probe_shard(manifest_df: pd.DataFrame, videos_dir, shard: int | None = None,
                deadline_s: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, failures) for the rows of one shard (every row when shard is None); each file's probe
    in a child process killed after `deadline_s` seconds (default DecodeDeadline().base_s)."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise UserError(f"videos folder not found: {videos_dir}")
    deadline_s = float(deadline_s or DecodeDeadline().base_s)
    rows = manifest_df if shard is None else manifest_df[manifest_df["shard"].astype(int) == int(shard)]
    table, failures = [], []
    with CallInProcess() as child:
        for vid, rel in zip(rows["id"], rows["path"]):
            try:
                answer = child.call(_probe_answer, (videos_dir / rel,), deadline_s)
            except DeadlineExceeded as exc:
                answer = ("error", "timeout", f"pyav {exc} reading the header and first frame")
            except ChildDied as exc:  # a crash in FFmpeg
                answer = ("error", "decode", str(exc))
            if answer[0] == "error":
                failures.append({"id": vid, "path": rel, "stage": answer[1], "error": answer[2]})
                continue
            info = answer[1]
            table.append({"id": vid, "path": rel, **info})
            if not info["has_video"]:
                failures.append({"id": vid, "path": rel, "stage": "stream", "error": "no video stream"})
    table_df = pd.DataFrame(table, columns=PROBE_COLUMNS)
    for c in ("n_frames", "width", "height", "rotation"):
        table_df[c] = pd.array(table_df[c].tolist(), dtype="Int64")
    return table_df, pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, metavar="FILE.csv", help="manifest CSV (lmmvqa manifest)")
    p.add_argument("--videos", required=True, metavar="DIR", help="folder the manifest's paths are relative to")
    p.add_argument("--shard", type=int, default=None, metavar="N", help="probe only this shard (default: all rows)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="probe table to write")
    p.add_argument("--failures", default=None, metavar="FILE.csv",
                   help="table of the videos that failed to probe (id, path, stage, error), to write "
                        "(default: beside --out, OUT.failures.csv)")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="seconds one file's probe may take before it is killed and listed as timed out "
                        f"(default {DecodeDeadline().base_s:g}, sampling.decode_deadline.base_s's default)")


def main(args) -> int:
    manifest = read_manifest(args.manifest)
    if args.shard is not None and int(args.shard) not in set(manifest["shard"].astype(int)):
        raise UserError(f"{args.manifest}: no shard {args.shard} in the manifest")
    if args.deadline is not None and not args.deadline > 0:
        raise UserError(f"--deadline must be > 0 seconds, got {args.deadline}")
    table, failures = probe_shard(manifest, args.videos, args.shard, args.deadline)
    out = Path(args.out)
    fail = Path(args.failures) if args.failures else paths.failures_table(out)
    atomic.write_csv(failures, fail)
    atomic.write_csv(table, out)
    print(f"probe: {len(table)} videos probed, {len(failures)} failure(s) -> {out}, {fail}")
    return 0

