"""The faces: what people and programs talk to (the MCP server, the CLI, the approval page, the demo).
They call the gate and never an adapter."""
