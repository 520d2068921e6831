"""api: the operator REST API and page (FastAPI).

Owns the routes, their schemas and auth. May import: gateway.fleet, gateway.buffer (read-only
queries), the foundation modules and device_protocol. Never gateway.app: what the routes need
of the running gateway comes through one interface.
"""
