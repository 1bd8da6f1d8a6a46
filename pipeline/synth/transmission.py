"""Transmission damage: a stream that loses packets on its way to the player.

The variant is encoded as a broadcaster would send it (H.264 in MPEG-TS, several slices per frame, a key
frame a second), bursts of its 188-byte transport packets are lost, the player decodes what arrived
(ffmpeg conceals what it can: smeared blocks, regions frozen until the next key frame) and what it shows
is encoded again at a high quality, so the variant is a clean file of a damaged picture that every
decoder reads. The full-reference score then measures the damage a viewer sees.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.synth import ffmpeg

TS_PACKET = 188
DECODE_TIMEOUT_S = 600.0  # a damaged stream must not hold a job forever


@dataclass(frozen=True)
class Loss:
    """What the network does: `percent` % of the packets lost in bursts of 1-`burst` (at least one packet,
    never one of the first `protect` share: the tables and the first key frame arrive), after an encode at
    `crf` with `slices` slices per frame and a key frame every `gop` frames; `seed` picks the packets."""
    percent: float
    crf: float
    gop: int
    seed: int
    slices: int = 4
    burst: int = 8
    protect: float = 0.05


def lose_packets(data: bytes, loss: Loss) -> tuple[bytes, int]:
    """(the packets that arrive, how many were lost) of an MPEG-TS byte string."""
    n = len(data) // TS_PACKET
    packets = np.frombuffer(data, dtype=np.uint8)[:n * TS_PACKET].reshape(n, TS_PACKET)
    if n == 0 or len(data) % TS_PACKET or (packets[:, 0] != 0x47).any():
        raise ValueError("not an MPEG-TS stream of whole 188-byte packets")
    first = min(n - 1, max(1, int(np.ceil(loss.protect * n))))
    target = min(n - first, max(1, int(round(loss.percent / 100.0 * n))))
    rng = np.random.default_rng([loss.seed, 3])
    keep = np.ones(n, dtype=bool)
    lost = 0
    while lost < target:  # the last burst is cut to the target
        start = int(rng.integers(first, n))
        keep[start:start + min(int(rng.integers(1, loss.burst + 1)), target - lost)] = False
        lost = int((~keep).sum())
    return packets[keep].tobytes(), lost


def send_and_receive(input_args: list, loss: Loss, sent_args: list, shown_args: list, out: Path) -> int:
    """Encode the input (`-i ...` and any `-vf` args) with `sent_args` as a transport stream, lose packets,
    decode what arrived and encode what it shows to `out` with `shown_args`; the packets lost."""
    with tempfile.TemporaryDirectory(prefix="lmmvqa-tx-") as work:
        sent, received = Path(work) / "sent.ts", Path(work) / "received.ts"
        ffmpeg.run([*input_args, "-an", *sent_args, "-g", str(loss.gop), "-x264-params",
                    f"slices={loss.slices}", *ffmpeg.BITEXACT, "-f", "mpegts", sent])
        arrived, lost = lose_packets(sent.read_bytes(), loss)
        received.write_bytes(arrived)
        ffmpeg.run(["-threads", "1", "-i", received, "-an", *shown_args, *ffmpeg.BITEXACT, out],
                   timeout=DECODE_TIMEOUT_S)
    return lost
