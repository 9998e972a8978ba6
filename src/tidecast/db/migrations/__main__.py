"""``python -m tidecast.db.migrations URL``: upgrade a database without starting a server."""

from tidecast.db.migrate import main

main()
