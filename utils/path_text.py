"""File names as text that can be read back, whatever bytes they hold (``predictions.csv``).

A POSIX file name is bytes; Python holds one that is not valid UTF-8 with surrogate escapes, which
no UTF-8 file can hold. :func:`path_text` writes a name that is valid UTF-8 (and has no control
character and does not start with ``"``) as it is; any other name is written quoted, as git quotes
unusual paths: between double quotes, with ``\\\\``, ``\\"``, ``\\n``, ``\\r``, ``\\t`` and ``\\xNN`` (one byte
that is not printable UTF-8). :func:`path_from_text` reverses it:

    path_from_text(path_text(p)) == p        # for every str path (surrogate escapes included)
"""
import os
import re

_SIMPLE = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_UNESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|[\\"nrt])')
_BACK = {"\\": b"\\", '"': b'"', "n": b"\n", "r": b"\r", "t": b"\t"}


def _plain(text):
    """Whether ``text`` can stand as it is: valid UTF-8, printable, not starting with a quote."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not text.startswith('"') and all(c.isprintable() or c == " " for c in text)


def path_text(path):
    """``path`` (str or bytes) as UTF-8 text that :func:`path_from_text` reads back."""
    text = os.fsdecode(path)
    if _plain(text):
        return text
    out = []
    for part in re.split(r"([\udc80-\udcff]+)", text):
        if part and "\udc80" <= part[0] <= "\udcff":  # bytes that are not UTF-8
            out += [f"\\x{b:02x}" for b in os.fsencode(part)]
            continue
        for c in part:
            if ord(c) in _SIMPLE:
                out.append(_SIMPLE[ord(c)])
            elif c.isprintable() or c == " ":
                out.append(c)
            else:
                out += [f"\\x{b:02x}" for b in c.encode("utf-8")]
    return '"' + "".join(out) + '"'


def path_from_text(text):
    """The path (str, surrogate-escaped where its bytes are not UTF-8) that :func:`path_text` wrote."""
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        return text
    raw = bytearray()
    pos = 0
    body = text[1:-1]
    for m in _UNESCAPE.finditer(body):
        raw += body[pos:m.start()].encode("utf-8")
        token = m.group(1)
        raw += bytes([int(token[1:], 16)]) if token[0] == "x" else _BACK[token]
        pos = m.end()
    raw += body[pos:].encode("utf-8")
    return os.fsdecode(bytes(raw))
