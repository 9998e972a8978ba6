"""Transcode: segment-parallel ABR encoding.

``ladder`` says which renditions a source gets; ``job`` turns one stored source
segment into every rendition with ONE ffmpeg (decode once, encode each rung)
and re-stamps the outputs onto the source timeline; ``worker`` runs jobs in a
separate process; ``coordinator`` feeds workers from the bus with retries,
backoff and a dead-letter queue.
"""
