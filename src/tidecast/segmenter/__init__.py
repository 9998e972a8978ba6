"""Segmenter: cuts a publisher's frames into GOP-aligned source segments.

``core`` is the sans-I/O cutting logic; ``cmaf`` muxes a cut segment to
fragmented MP4; ``service`` stores segments and announces them on the bus.
"""
