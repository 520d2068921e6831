"""Bearer tokens with a scope, and the gateway port a route is served against.

`api_tokens` maps token -> scope ("read" or "admin"; admin may do everything read may); an
empty map leaves the API open. Every configured token is compared, in constant time, so the
answer's timing does not tell how much of a guessed token was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.port import GatewayPort
from gateway.api.schemas import ApiError

# Module-level: route signatures are resolved against the module's globals (annotations are
# strings here), so a local would make FastAPI take the parameter for a query string.
bearer = HTTPBearer(auto_error=False, description="token:scope pairs from api_tokens")
Scope = Literal["read", "admin"]


async def gateway_port(request: Request) -> GatewayPort:
    """The port create_api was given (a dependency: routes take it as a `Port` parameter).
    Async, as every dependency here: FastAPI runs a plain `def` one in its thread pool, a
    thread hop per request for a dictionary lookup."""
    port: GatewayPort = request.app.state.gateway_port
    return port


Port = Annotated[GatewayPort, Depends(gateway_port)]


def scope_of(tokens: Mapping[str, str], token: str) -> str | None:
    """The token's scope, or None for an unknown token; compares against every token."""
    wanted = token.encode("utf-8", "surrogatepass")
    granted = None
    for known, scope in tokens.items():
        if hmac.compare_digest(known.encode("utf-8", "surrogatepass"), wanted):
            granted = scope
    return granted


def authorize(tokens: Mapping[str, str], scope: Scope, token: str | None) -> None:
    if not tokens:
        return
    if token is None:
        raise ApiError(401, "unauthorized", "a bearer token is required "
                                            "(Authorization: Bearer <token>)")
    granted = scope_of(tokens, token)
    if granted is None:
        raise ApiError(401, "unauthorized", "unknown token")
    if scope == "admin" and granted != "admin":
        raise ApiError(403, "forbidden", "this route needs a token with the admin scope")


def needs(scope: Scope) -> Callable[..., Awaitable[None]]:
    async def check(port: Port, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                       Depends(bearer)]) -> None:
        authorize(port.api_tokens, scope, credentials.credentials if credentials else None)
    return check


READ: list[DependsParam] = [Depends(needs("read"))]
ADMIN: list[DependsParam] = [Depends(needs("admin"))]
