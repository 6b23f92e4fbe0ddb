"""The faces of the service: the HTTP API (FastAPI, ``serving.api``) and MCP
(``serving.mcp``). They call the pipeline; nothing below imports them."""
