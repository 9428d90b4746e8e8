"""The HTTP adapter: the Open Inference Protocol's REST binding, images, the page; a thin codec over server/core.

server.py (the aiohttp application, start and drain), v2.py (the KServe v2 REST routes), images.py (/v1 classify,
explain, models, live panel), codec.py (JSON and binary tensors <-> numpy), status.py (errors -> HTTP statuses,
tokens, metrics), live.py (the live summary), static/ (the page), openapi.json. See docs/http.md.
"""
