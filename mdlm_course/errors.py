"""The package's one base error class.

Every error that is the user's to fix (a bad argument, a bad file, a bad path) derives from MdlmError,
so that the CLI can catch them all and print one line:

    try:
        BPETokenizer.load("notes.txt")
    except MdlmError as e:
        print(e)   # notes.txt: not a tokenizer file (invalid or truncated JSON: ...); re-save it with BPETokenizer.save

It is a ValueError, so code written before it existed (`except ValueError`) still catches them.
A bug in the package itself is not an MdlmError: it stays a plain exception with its traceback.
"""
from __future__ import annotations


class MdlmError(ValueError):
    """Every error of this package that is the user's to fix; its message is one line and says what to do."""
