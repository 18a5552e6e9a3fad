from optsearch.cli import main

raise SystemExit(main())
