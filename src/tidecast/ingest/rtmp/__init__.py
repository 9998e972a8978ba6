"""RTMP ingest: a sans-I/O server protocol core (no sockets, no asyncio here).

This package owns the RTMP wire protocol for publishers. :class:`ServerConnection`
is fed bytes, yields typed events and hands back bytes to send; the modules
below it own the handshake, the chunk layer, AMF0 and FLV tag payloads.
"""

from __future__ import annotations

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp.amf0 import UNDEFINED, AMF0DecodeError, AMFDate, ECMAArray
from tidecast.ingest.rtmp.chunk import ChunkError, ChunkReader, ChunkWriter, Limits, Message
from tidecast.ingest.rtmp.flv import FLVError, UnsupportedCodec
from tidecast.ingest.rtmp.handshake import HandshakeError, ServerHandshake
from tidecast.ingest.rtmp.protocol import (
    AudioFrame,
    AudioSequenceHeader,
    ConnectRequest,
    EndOfStream,
    Event,
    MediaRejected,
    MetaData,
    PublishRequest,
    ServerConnection,
    UnpublishRequest,
    VideoFrame,
    VideoSequenceHeader,
    max_buffered_bytes,
)

__all__ = [
    "UNDEFINED",
    "AMF0DecodeError",
    "AMFDate",
    "AudioFrame",
    "AudioSequenceHeader",
    "ChunkError",
    "ChunkReader",
    "ChunkWriter",
    "ConnectRequest",
    "ECMAArray",
    "EndOfStream",
    "Event",
    "FLVError",
    "HandshakeError",
    "Limits",
    "MediaRejected",
    "Message",
    "MetaData",
    "ProtocolError",
    "PublishRequest",
    "ServerConnection",
    "ServerHandshake",
    "UnpublishRequest",
    "UnsupportedCodec",
    "VideoFrame",
    "VideoSequenceHeader",
    "max_buffered_bytes",
]
