"""Who may use the service: a bearer token (CAPSNET_API_TOKEN, or CAPSNET_API_TOKEN_FILE for a mounted Secret) and
the browser origins that may call it (CAPSNET_CORS_ORIGINS). Both off by default.

With a token set, every route but the health checks (OPEN: what probes and load balancers call) needs
`Authorization: Bearer <token>`, over HTTP and gRPC alike (gRPC: the `authorization` metadata). The token is compared
in constant time; a request without it gets 401 with `WWW-Authenticate: Bearer` (gRPC: UNAUTHENTICATED).
"""

from __future__ import annotations

import hmac

OPEN = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})  # health: probes keep working
OPEN_GRPC = frozenset({"ServerLive", "ServerReady", "ModelReady"})
CHALLENGE = 'Bearer realm="capsnet"'


def bearer_matches(authorization: str | bytes | None, token: str) -> bool:
    """Whether an Authorization value is `Bearer <token>` (constant time in the token's comparison)."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def refusal(token: str, path: str, authorization: str | bytes | None) -> str | None:
    """Why a request to path may not go on (None: it may): no token is set, the path is a health check, or the
    request carries the token."""
    if not token or path in OPEN or bearer_matches(authorization, token):
        return None
    return "this service needs a token: send Authorization: Bearer <token> (CAPSNET_API_TOKEN)" if not authorization \
        else "the token sent is not this service's"
