"""``cutwatch decode-stamp``: a ``cutwatch-stamp-bin`` value from a log or a capture, made readable."""

from __future__ import annotations

import base64
import binascii
import json
import re
import string
from typing import Any

import click

from cutwatch.core import StampCodec, StampError
from cutwatch.proto import stamp_pb2

__all__ = ["decode_stamp", "describe_stamp", "format_stamp", "parse_stamp_text"]

_HEX_DIGITS = frozenset(string.hexdigits)
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
_DECODER_ID = "cutwatch-cli:decode-stamp"


def parse_stamp_text(text: str, encoding: str = "auto") -> bytes:
    """The stamp bytes behind ``text`` (hex, or base64 as gRPC puts it on the wire).

    ``auto`` tries hex first, since a hex dump is also valid base64; a stamp
    in base64 nearly always has a letter past ``f`` (use ``encoding`` to force).
    """
    cleaned = "".join(text.split())
    if encoding != "base64" and cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    if not cleaned:
        raise ValueError("the stamp is empty")
    if encoding in ("auto", "hex") and len(cleaned) % 2 == 0 and set(cleaned) <= _HEX_DIGITS:
        return bytes.fromhex(cleaned)
    if encoding == "hex":
        raise ValueError("not a hex string (expected an even number of 0-9, a-f digits)")
    if not _BASE64.match(cleaned):
        raise ValueError("neither hex nor base64")
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither hex nor valid base64") from None


def describe_stamp(data: bytes) -> dict[str, Any]:
    """Everything one stamp says, as JSON-ready data; raises ``StampError``.

    The stamp is validated exactly as an agent would; names that the sender
    did not repeat in this stamp (the receiver learnt them earlier) show as
    ``null``: one stamp alone cannot resolve them.
    """
    StampCodec(_DECODER_ID).decode(data)
    message = stamp_pb2.Stamp()
    message.ParseFromString(data)
    names: dict[int, str] = {0: message.sender}
    for offset, name in enumerate(message.names):
        names[message.names_start + offset] = name
    return {
        "bytes": len(data),
        "version": message.version,
        "sender": message.sender,
        "epoch": message.epoch,
        "call_id": message.call_id,
        "clock": [
            {"index": index, "process": names.get(index), "value": value}
            for index, value in enumerate(message.clock)
        ],
        "names_start": message.names_start,
        "names": list(message.names),
        "ack": {"peer_fingerprint": f"{message.peer_fp:08x}", "peer_known": message.peer_known}
        if message.peer_fp
        else None,
        "trace_id": message.trace_id.hex() or None,
        "span_id": message.span_id.hex() or None,
    }


def format_stamp(info: dict[str, Any]) -> str:
    """The readable form of ``describe_stamp``'s result."""
    lines = [
        f"stamp      {info['bytes']} bytes, version {info['version']}",
        f"sender     {info['sender']}",
        f"epoch      {info['epoch']}",
        f"call id    {info['call_id']}",
        "clock",
    ]
    for entry in info["clock"]:
        process = entry["process"] if entry["process"] is not None else "(name sent earlier)"
        lines.append(f"  [{entry['index']}] {process} = {entry['value']}")
    ack = info["ack"]
    if ack is not None:
        known, fingerprint = ack["peer_known"], ack["peer_fingerprint"]
        lines.append(f"ack        holds {known} names of the process with fingerprint {fingerprint}")
    if info["trace_id"]:
        lines.append(f"trace id   {info['trace_id']}")
        lines.append(f"span id    {info['span_id'] or '-'}")
    return "\n".join(lines)


@click.command("decode-stamp")
@click.argument("stamp")
@click.option(
    "--encoding",
    type=click.Choice(["auto", "hex", "base64"]),
    default="auto",
    show_default=True,
    help="How STAMP is written.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def decode_stamp(stamp: str, encoding: str, as_json: bool) -> None:
    """Decode a cutwatch-stamp-bin value (hex or base64) for debugging."""
    try:
        data = parse_stamp_text(stamp, encoding)
        info = describe_stamp(data)
    except (ValueError, StampError) as exc:
        raise click.BadParameter(str(exc), param_hint="STAMP") from None
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(format_stamp(info))
