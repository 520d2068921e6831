"""api: the operator REST API and page (FastAPI), served by uvicorn on the gateway's loop.

Owns the routes (one module per OpenAPI tag: health, fleet, pipeline; and the page), their
schemas, the token check, and `create_api(port)` (factory.py) that assembles them. Routes only
read state and format it; nothing here parses frames or writes the buffer. The contract, with
examples, is docs/api.md; the schema is served at /openapi.json.

What the routes need of the running gateway comes through one interface, `GatewayPort`
(port.py): the fleet, a few pipeline facts, three read-only queries and two commands. May
import: gateway.fleet, the foundation modules and device_protocol. Never gateway.app (its
adapter, gateway.gateway_port.GatewayView, implements the port from above) nor the stages'
internals.
"""
