from safe_mcp.cli import main

raise SystemExit(main())
