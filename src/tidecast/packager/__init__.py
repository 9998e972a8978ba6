"""Packager: turns stored CMAF segments into HLS playlists (the only writer of manifests)."""
