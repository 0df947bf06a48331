"""Passwords never printed: URIs in messages, tags and logs lose theirs."""

from __future__ import annotations

import re

# [scheme:]//user:PASSWORD@host - the password runs to the last "@" before the host's "/", so an unescaped
# "@" inside it does not leak the rest.
_PASSWORD = re.compile(r"(?P<head>(?:\b[a-zA-Z][a-zA-Z0-9+.-]*:)?//[^:/@\s]*:)[^\s/]*@")


def hide_passwords(text: str) -> str:
    """``text`` with the password of every ``[scheme:]//user:password@host`` in it replaced by ``***``."""
    return _PASSWORD.sub(r"\g<head>***@", text)
