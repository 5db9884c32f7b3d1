"""The OpenAddresses Machine: process public address sources into the standard outputs."""

from __future__ import annotations

__version__ = "8.0.0.dev0"
