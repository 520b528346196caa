"""The wire: protocol codec, schema language and data contracts (stdlib, numpy, msgpack only)."""
