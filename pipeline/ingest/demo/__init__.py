"""The synthetic demo dataset (`lmmvqa demo-data`): procedural videos with graded, known distortions and a
formula MOS.

Each video is one row of parameters drawn from (seed, index) (`labels`: sizes, scene, distortions and their
strengths, codec, the MOS); `scenes` draws its pixels at any content time, `distortions` degrades them and
re-times the frames, `video` encodes the result, and `dataset` (the command) writes every video and
labels.csv.
"""
