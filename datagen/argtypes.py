"""argparse types for the command lines of pfm-datagen and pfm: counts that name the flag's bad value and the fix."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["at_least", "positive"]


def at_least(minimum: int, example: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum``; anything else fails naming value and fix.

    argparse prefixes the message with the flag (``argument --samples: ...``) and exits with status 2.
    """

    def parse(text: str) -> int:
        hint = f" (e.g. {example})" if example is not None else ""
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer; expected an integer >= {minimum}{hint}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{value} is below {minimum}; expected an integer >= {minimum}{hint}"
            )
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


def positive(example: float) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite numbers > 0; anything else fails naming value and fix."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number; expected a number > 0 (e.g. {example})"
            ) from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0; expected e.g. {example}")
        return value

    parse.__name__ = "number > 0"
    return parse
