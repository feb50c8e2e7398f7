"""What wraps every request, whatever its route.

chain           the one middleware and response hook, calling the parts below
problems        errors as RFC 9457 problem+json; names what failed (database, storage)
auth            access control: API keys with roles, signed stream URLs
cors            CORS preflights and headers for CORS_ORIGINS
requestlog      request ids and the access log (plain or JSON lines)
instrumentation request metrics: counted and timed by route template
params          request input as typed values, or a 400 naming each field
pagination      keyset cursors and the Link rel="next" header
responses       JSON bodies (orjson)

May import storage, metrics, schemas, db and settings; never a route or
the byte path (tests/test_architecture.py).
"""
