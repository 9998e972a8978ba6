"""tidecast: self-hosted live streaming."""

__version__ = "0.1.0"
