from safe_mcp.faces.cli import main

raise SystemExit(main())
