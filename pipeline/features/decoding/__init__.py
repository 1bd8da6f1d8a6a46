"""Decoding a video once: what to sample (`sampling`), the frame views (`views`), the backends
(`decode`, stills in `decode_image`), the worker processes (`decode_pool`) and the host staging
buffers a batch is gathered in (`staging`)."""
