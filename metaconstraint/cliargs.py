"""The argument types and help formatter the command line's subcommands share (``metaconstraint.cli``,
``metaconstraint.sweep``, ``metaconstraint.data.collect``)."""

from __future__ import annotations

import argparse
import math

__all__ = ["HelpFormatter", "nonneg_int", "number", "positive_int"]


# ----------------------------------------------------------------------------- help
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default, or there is
    nothing to say (no default, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        return super()._get_help_string(action)


# ----------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        v = int(str(text).replace("_", ""))
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
        if not f.is_integer():
            raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
        v = int(f)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return v
