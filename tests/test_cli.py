"""The ``cutwatch`` command line: version, decode-stamp, help and the collector's start."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from cli_runner import cli_runner
from polling import wait_until
from processes import Proc, cutwatch_command, listening_address, spawn, stop_all

import cutwatch
from cutwatch.agent import StampCodec
from cutwatch.cli import main
from cutwatch.cli._options import parse_duration

TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))


@pytest.fixture
def stamp() -> bytes:
    """A stamp as a real codec writes it: two clock entries, names, an ack and span ids."""
    receiver = StampCodec("teller:2")
    sender = StampCodec("bank:1")
    # The bank learns the teller's name from a stamp, so its next stamp acknowledges it.
    sender.decode(receiver.encode(["teller:2"], [3], peer=None).data)
    return sender.encode(
        ["bank:1", "teller:2"], [5, 3], peer="teller:2", epoch=2, call_id=7, trace_id=TRACE, span_id=SPAN
    ).data


def invoke(*args: str) -> tuple[int, str]:
    result = cli_runner().invoke(main, list(args))
    return result.exit_code, result.output


def test_version_command_and_option_print_the_package_version() -> None:
    assert invoke("version") == (0, f"cutwatch {cutwatch.__version__}\n")
    code, output = invoke("--version")
    assert code == 0
    assert cutwatch.__version__ in output


def test_decode_stamp_reads_hex_as_json(stamp: bytes) -> None:
    code, output = invoke("decode-stamp", "--json", stamp.hex())
    assert code == 0, output
    info = json.loads(output)
    assert info["sender"] == "bank:1"
    assert info["epoch"] == 2
    assert info["call_id"] == 7
    assert info["bytes"] == len(stamp)
    assert info["clock"] == [
        {"index": 0, "process": "bank:1", "value": 5},
        {"index": 1, "process": "teller:2", "value": 3},
    ]
    teller_fp = f"{StampCodec('teller:2').owner_fp:08x}"
    assert info["ack"] == {"peer_fingerprint": teller_fp, "peer_known": 1}
    assert info["trace_id"] == TRACE.hex()
    assert info["span_id"] == SPAN.hex()


@pytest.mark.parametrize(
    "encode",
    [
        lambda data: base64.b64encode(data).decode(),
        lambda data: base64.urlsafe_b64encode(data).decode().rstrip("="),
        lambda data: "0x" + data.hex().upper(),
    ],
    ids=["base64", "urlsafe-unpadded", "0x-upper-hex"],
)
def test_decode_stamp_accepts_the_usual_spellings(stamp: bytes, encode: Callable[[bytes], str]) -> None:
    code, output = invoke("decode-stamp", "--json", encode(stamp))
    assert code == 0, output
    assert json.loads(output)["sender"] == "bank:1"


def test_decode_stamp_text_output_names_every_field(stamp: bytes) -> None:
    code, output = invoke("decode-stamp", stamp.hex())
    assert code == 0, output
    assert "sender     bank:1" in output
    assert "[0] bank:1 = 5" in output
    assert "[1] teller:2 = 3" in output
    assert "call id    7" in output
    assert TRACE.hex() in output


def test_names_sent_in_an_earlier_stamp_show_as_unknown() -> None:
    codec = StampCodec("bank:1")
    codec.decode(StampCodec("teller:2").encode(["teller:2"], [1], peer="bank:1").data)
    # The teller acknowledged the bank's name table, so the bank sends values only.
    ack = StampCodec("teller:2")
    ack.decode(codec.encode(["bank:1", "teller:2"], [1, 1], peer="teller:2").data)
    codec.decode(ack.encode(["teller:2", "bank:1"], [2, 1], peer="bank:1").data)
    data = codec.encode(["bank:1", "teller:2"], [2, 2], peer="teller:2").data
    code, output = invoke("decode-stamp", "--json", data.hex())
    assert code == 0, output
    info = json.loads(output)
    assert info["names"] == []
    assert info["clock"][1] == {"index": 1, "process": None, "value": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a stamp!", "neither hex nor base64"),
        ("", "empty"),
        ("ff", "does not parse"),
        (bytes([0x08, 0x09]).hex(), "unsupported stamp version 9"),
        ("0801", "no valid sender"),
    ],
)
def test_invalid_stamps_are_a_usage_error_with_a_clear_message(text: str, message: str) -> None:
    code, output = invoke("decode-stamp", text)
    assert code == 2
    assert message in output
    assert "Traceback" not in output


def test_forced_hex_encoding_rejects_base64(stamp: bytes) -> None:
    code, output = invoke("decode-stamp", "--encoding", "hex", base64.b64encode(stamp).decode())
    assert code == 2
    assert "not a hex string" in output


def _installed_script() -> str:
    """The ``cutwatch`` console script beside the running interpreter."""
    folder = Path(sys.executable).parent
    for name in ("cutwatch", "cutwatch.exe"):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which("cutwatch")
    if found is None:
        pytest.fail("the cutwatch console script is not installed")
    return found


def test_installed_console_script_runs(stamp: bytes, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = _installed_script()
    version = subprocess.run(
        [script, "version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert (version.returncode, version.stdout) == (0, f"cutwatch {cutwatch.__version__}\n"), version.stderr
    decoded = subprocess.run(
        [script, "decode-stamp", "--json", stamp.hex()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout)["clock"][1]["process"] == "teller:2"
    bad = subprocess.run(
        [script, "decode-stamp", "zz"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "Invalid value for STAMP" in bad.stderr


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command under ``group``, subcommands included, by its full name."""
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


COMMANDS = _commands(main)


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_has_help(name: str, command: click.Command) -> None:
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert [p.name for p in options if not (p.help or "").strip()] == []


def _defaulted(command: click.Command) -> list[click.Option]:
    """The options with a default of their own (a flag's is off, a repeatable option's none)."""
    return [
        option
        for option in command.params
        if isinstance(option, click.Option)
        and not option.is_flag
        and not option.multiple
        and option.default is not None
        and type(option.default).__name__ != "Sentinel"  # click's "not given"
    ]


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_with_a_default_shows_it(name: str, command: click.Command) -> None:
    assert [option.name for option in _defaulted(command) if not option.show_default] == []
    shown_in_help = " ".join(cli_runner().invoke(main, [*name.split(), "--help"]).output.split())
    assert shown_in_help.count("[default: ") >= len(_defaulted(command)), shown_in_help


def test_durations_and_limits_show_their_defaults() -> None:
    def shown(command: str) -> str:  # click wraps the help text: compare it with single spaces
        return " ".join(cli_runner().invoke(main, [command, "--help"]).output.split())

    collector_help = shown("collector")
    assert "Longest a predicate may run on one cut" in collector_help and "[default: 5s]" in collector_help
    assert "How many cuts to list, newest first. [default: 20; 1<=x<=1000]" in shown("cuts")
    assert "With --now: how long to wait for the cut. [default: 10s]" in shown("deadlocks")
    assert "the token in $CUTWATCH_READER_TOKEN" in shown("check")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("30", 30.0),
        (" 2m ", 120.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("1.5d", 129600.0),
        ("2w", 1209600.0),
        (".5h", 1800.0),
    ],
)
def test_one_parser_reads_every_duration_timeouts_and_ages_alike(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [("soon", "is not a duration"), ("7y", "is not a duration"), ("0d", "positive"), ("9" * 400, "finite")],
)
def test_a_bad_duration_says_what_a_good_one_looks_like(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_the_collector_says_once_where_it_listens(tmp_path: Path) -> None:
    procs: list[Proc] = []
    try:
        command = [
            *cutwatch_command(),
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "c.db"),
        ]
        proc = spawn(tmp_path, procs, "collector", command)
        address = listening_address(proc)
        assert not address.endswith(":0"), "the bound port, not the one asked for"
        wait_until(lambda: "security:" in proc.log.read_text(), "the security line")
        output = proc.log.read_text()
        assert output.count("listening on") == 1, output
        assert "security: none (plaintext, no tokens)" in output
    finally:
        stop_all(procs)
