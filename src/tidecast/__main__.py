from tidecast.cli import main

raise SystemExit(main())
