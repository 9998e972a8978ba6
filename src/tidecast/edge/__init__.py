"""Edge: configuration for a caching CDN tier (nginx) in front of tidecast origins."""
