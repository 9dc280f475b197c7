"""The OpenAI-compatible HTTP API of a node (see :mod:`.app`)."""
