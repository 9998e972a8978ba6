"""Origin: the HTTP server for players (HLS objects), the web pages and the JSON API."""
