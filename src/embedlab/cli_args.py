"""argparse value types shared by the ``embedlab`` commands: one style for booleans and unset values."""

from __future__ import annotations

import argparse


def optional(kind):
    """An argparse type where "" means "not given" (MLproject's default: params.yaml decides)."""
    def convert(text: str):
        return None if text == "" else kind(text)
    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def parse_bool(text: str) -> bool:
    """true/false, the one boolean style of settings (MLflow passes -P use_discriminator=false)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def auto_or(kind):
    """An argparse type that takes ``auto`` or a ``kind`` value."""
    return lambda text: "auto" if text == "auto" else kind(text)
