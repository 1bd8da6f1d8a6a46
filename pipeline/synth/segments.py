"""Cut the planned segments of one reference to lossless files: the references the variants are scored against.

`lmmvqa synth-segments --config C --dataset D --plan plan.csv --reference KEY --out DIR`

Writes DIR/seg-<k>.mkv (FFV1, 8-bit 4:2:0, the planned size, constant frame rate at the reference's
average rate: frame i at i / rate) and DIR/segments.csv (`SEGMENT_COLUMNS`), the folder as a whole
(pipeline.core.atomic.directory). A reference that cannot be decoded, or that yields fewer than 90 % of a
segment's planned frames, gets its error in segments.csv instead of files, and the job still succeeds:
the collect step lists it among the failures and the other references go on.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import pandas as pd

from pipeline.cli_args import add_config_arg
from pipeline.core import atomic, resolve
from pipeline.synth import ffmpeg
from pipeline.synth.plan import read_plan, synth_dataset

SEGMENT_COLUMNS = ["segment", "file", "start_frame", "frames", "width", "height", "rate", "error"]
SEGMENTS_TABLE = "segments.csv"
MIN_SHARE = 0.9


def segment_file(segment: int) -> str:
    return f"seg-{int(segment)}.mkv"


def count_frames(path) -> int:
    """Video packets in a file (one per frame for the intra-only codecs here), without decoding."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def cut(reference: Path, out: Path, start: int, frames: int, width: int, height: int, rate: Fraction,
        ref_size: tuple[int, int]) -> int:
    """Frames start..start+frames-1 of the reference (decoded in order, so frame numbers are exact),
    re-timed to a constant `rate`, resized (or an odd side cropped), FFV1. Returns the frames written."""
    if (width, height) == (ref_size[0] // 2 * 2, ref_size[1] // 2 * 2):
        size = f"crop={width}:{height}:0:0"
    else:
        size = f"scale={width}:{height}:flags=bicubic"
    chain = ",".join([f"select='between(n,{start},{start + frames - 1})'",
                      f"setpts=N*{rate.denominator}/{rate.numerator}/TB", size, "setsar=1", "format=yuv420p"])
    ffmpeg.run(["-threads", "1", "-i", reference, "-map", "0:v:0", "-an", "-sn", "-dn", "-vf", chain,
                "-fps_mode", "passthrough", "-frames:v", frames, "-c:v", "ffv1", "-threads", "1", *ffmpeg.BITEXACT,
                out])
    return count_frames(out)


def cut_reference(plan: pd.DataFrame, reference: str, references: Path, out: Path) -> pd.DataFrame:
    """Cut every planned segment of one reference into `out` (a folder that appears whole)."""
    rows = plan[plan["reference"] == reference]
    if rows.empty:
        raise SystemExit(f"synth-segments: reference '{reference}' is not in the plan")
    first = rows.iloc[0]
    source = references / first["path"]
    segs = rows.drop_duplicates("segment").sort_values("segment")
    table = []
    with atomic.directory(out) as tmp:
        ref_size = (int(first["ref_width"]), int(first["ref_height"]))
        for seg in segs.itertuples(index=False):
            rate = Fraction(seg.rate)
            entry = {"segment": seg.segment, "file": "", "start_frame": seg.start_frame, "frames": 0,
                     "width": seg.width, "height": seg.height, "rate": seg.rate, "error": ""}
            try:
                got = cut(source, tmp / segment_file(seg.segment), int(seg.start_frame), int(seg.frames),
                          int(seg.width), int(seg.height), rate, ref_size)
                if got < max(1, MIN_SHARE * int(seg.frames)):
                    raise ffmpeg.FFmpegError(f"decoded {got} of {seg.frames} frames (from frame {seg.start_frame}): "
                                             "the file may be truncated or damaged")
                entry.update(file=segment_file(seg.segment), frames=got)
            except (ffmpeg.FFmpegError, av.FFmpegError, OSError) as exc:
                entry["error"] = " ".join(str(exc).split()) or type(exc).__name__
                (tmp / segment_file(seg.segment)).unlink(missing_ok=True)
            table.append(entry)
        df = pd.DataFrame(table, columns=SEGMENT_COLUMNS)
        df.to_csv(tmp / SEGMENTS_TABLE, index=False, lineterminator="\n")
    return df


def read_segments(folder) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / SEGMENTS_TABLE, dtype={"rate": str, "file": str, "error": str},
                       keep_default_na=False)


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_config_arg(p)
    p.add_argument("--dataset", required=True, help="a synth dataset of the config")
    p.add_argument("--plan", required=True, help="the dataset's plan (lmmvqa synth-plan)")
    p.add_argument("--reference", required=True, help="reference key (the plan's `reference` column)")
    p.add_argument("--out", required=True, help="output folder: seg-<k>.mkv files and segments.csv")


def main(args) -> int:
    s = resolve.load(args.config)
    references = Path(synth_dataset(s.datasets, args.dataset).references)
    df = cut_reference(read_plan(args.plan), args.reference, references, Path(args.out))
    bad = df[df["error"] != ""]
    print(f"synth-segments: {args.reference}: {len(df) - len(bad)} segments cut, {len(bad)} failed"
          + (f" ({bad['error'].iloc[0]})" if len(bad) else "") + f" -> {args.out}")
    return 0
