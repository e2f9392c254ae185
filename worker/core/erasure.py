"""Erasure helpers: how a forgotten identifier is named afterwards. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any


def guid_digest(guid: str) -> str:
    """``sha256:<hex>`` of a guid: what the audit keeps instead of the guid itself.

    Whoever still holds the guid can check that it was forgotten; the row alone names no one.
    """
    return "sha256:" + hashlib.sha256(guid.encode()).hexdigest()


def placeholder(guid: str) -> str:
    """What replaces a forgotten guid inside older audit rows (a short digest)."""
    return "forgotten:" + guid_digest(guid).removeprefix("sha256:")[:16]


def redact(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` (JSON-like) with every occurrence of each key of ``names`` replaced by its
    value, in strings at any depth (dict keys included)."""
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {redact(k, names): redact(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, names) for v in value]
    return value
