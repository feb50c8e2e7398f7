"""What the API accepts and returns, defined once per shape.

Handlers validate input with these models and build response bodies from
these TypedDicts; /openapi.json is generated from the same definitions with
pydantic's JSON Schema (handlers/docs.py). Imports only the data layer's
names for what it stores (db/clips.py's sort orders).
"""
