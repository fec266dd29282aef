"""Mistakes on the command line, and the checks of its arguments."""

import argparse
import sys
from pathlib import Path


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""


def writable_directory(path: str) -> Path:
    """``path`` created if need be and checked writable, or a one-line :class:`UsageError`."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {path}: {error.strerror}") from None
    return out


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the same one line as every other mistake."""

    def error(self, message: str) -> None:
        print(f"pyro-grad: error: {message} (see pyro-grad {self.prog.split()[-1]} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
