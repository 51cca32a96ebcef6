from lt_ssl.cli import main

raise SystemExit(main())
