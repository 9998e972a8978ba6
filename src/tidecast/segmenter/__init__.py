"""Segmenter: cuts a publisher's frames into GOP-aligned source segments.

``core`` is the sans-I/O cutting logic (and the segment limits); ``cmaf`` muxes
a cut segment to fragmented MP4; ``service`` stores segments and announces them
on the bus; ``plan`` declares what the segmenter needs from transcoding (the
rungs a source gets) and ``backpressure`` decides which top rungs to skip when
transcoding lags.
"""
