"""The dashboard, /metrics and /healthz that ``ainode serve`` runs (Starlette + Jinja2 + uvicorn).

Server-rendered pages, no JavaScript build step: what a PACS admin needs to see
at a glance, and the few admin actions (retry, purge) behind a token.
"""

__all__: list[str] = []
