"""One rule for the port of every server a test starts: the product's, below the kernel's
ephemeral range and above Ray's worker ports, so a Ray starting meanwhile cannot take it."""

from serve.ports import free_port

__all__ = ["free_port"]
