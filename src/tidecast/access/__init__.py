"""Playback access: who may watch a stream, and HLS AES-128 for the streams that ask.

Sans-I/O, like the RTMP core: ``tokens`` (playback tokens an nginx edge can
verify with ``secure_link_md5``, password hashes), ``hlskey`` (AES-128 keys,
segment encryption, the EXT-X-KEY tags of a served playlist) and ``limits``
(password attempts per address). The origin's I/O shell is
``tidecast.origin.playback``.
"""
