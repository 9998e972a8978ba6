"""Recorder: every broadcast recorded from the CMAF renditions viewers watch (no second
encode), turned into VOD when it ends; clips, MP4 downloads, retention."""
