"""dellm-p2p: a peer-to-peer network of language-model nodes."""

__version__ = "0.1.0"
