"""Command-line programs: ``dellm-node`` and ``dellm``."""
