"""``cutwatch.Agent()`` reads what it is not given from the environment; arguments always win."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import pytest
import trustme
from cli_runner import cli_runner

import cutwatch
from cutwatch._environment import env_value
from cutwatch.agent._settings import credentials_from_env, service_from_env
from cutwatch.cli._options import collector_option, env_tokens
from cutwatch.collector import DEFAULT_LISTEN
from cutwatch.security import SecurityConfigError, reader_token_from_env

TOKEN = "agent-token-0123456789abcdef"

pytestmark = pytest.mark.usefixtures("clean_environment")  # tests/conftest.py: every variable unset


def agent(*args: object, **kwargs: object) -> cutwatch.Agent:
    """An agent that is never started: construction is what these tests look at."""
    return cutwatch.Agent(*args, **kwargs)  # type: ignore[arg-type]


def test_the_positional_form_still_works_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTWATCH_SERVICE", "from-env")
    monkeypatch.setenv("CUTWATCH_COLLECTOR", "10.0.0.1:7070")
    given = agent("bank", "127.0.0.1:7070")
    assert (given.service, given.collector) == ("bank", "127.0.0.1:7070")
    assert given.process_id.startswith("bank:")


def test_service_comes_from_cutwatch_then_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, service.name=shop%2Dapi")
    assert agent().service == "shop-api"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    assert agent().service == "checkout"
    monkeypatch.setenv("CUTWATCH_SERVICE", "  ledger  ")
    assert agent().service == "ledger"


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTWATCH_SERVICE", "")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    assert service_from_env() == "checkout"


def test_without_a_service_name_the_error_says_what_to_set() -> None:
    with pytest.raises(ValueError, match="set CUTWATCH_SERVICE \\(or OTEL_SERVICE_NAME\\)"):
        agent()


def test_a_bad_cutwatch_service_or_argument_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTWATCH_SERVICE", "my service")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fine")
    with pytest.raises(ValueError, match="CUTWATCH_SERVICE"):
        agent()
    with pytest.raises(ValueError, match="'a/b' must be"):
        agent("a/b")


@pytest.mark.parametrize(
    ("variable", "value", "service"),
    [
        ("OTEL_SERVICE_NAME", "Payment Service", "Payment_Service"),
        ("OTEL_SERVICE_NAME", "ns/app", "ns_app"),
        ("OTEL_SERVICE_NAME", "café:1", "caf__1"),
        ("OTEL_SERVICE_NAME", "x" * 150, "x" * 100),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=a%20b", "a_b"),
    ],
)
def test_a_name_opentelemetry_accepts_is_made_to_fit_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, value: str, service: str
) -> None:
    """Those variables belong to OpenTelemetry, whose names are freer: they must not stop the app."""
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.DEBUG, logger="cutwatch.agent"):
        assert agent().service == service
    logged = [r.getMessage() for r in caplog.records if r.name == "cutwatch.agent"]
    assert len(logged) == 1 and variable in logged[0] and repr(service) in logged[0], logged


def test_a_name_that_fits_already_is_not_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    with caplog.at_level(logging.DEBUG, logger="cutwatch.agent"):
        assert agent().service == "checkout"
    assert [r for r in caplog.records if r.name == "cutwatch.agent"] == []


def test_collector_comes_from_the_environment_unless_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent("bank").collector is None
    monkeypatch.setenv("CUTWATCH_COLLECTOR", "127.0.0.1:7070")
    assert agent("bank").collector == "127.0.0.1:7070"
    assert agent("bank", None).collector is None, "an explicit None means: no collector"
    assert agent("bank", collector=None).collector is None
    monkeypatch.setenv("CUTWATCH_COLLECTOR", "127.0.0.1: 7070")
    with pytest.raises(ValueError, match="CUTWATCH_COLLECTOR"):
        agent("bank")


def test_the_agent_token_comes_from_its_role_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTWATCH_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("CUTWATCH_TOKEN", "reader-token-0123456789abcdef")
    credentials = credentials_from_env()
    assert credentials is not None and credentials.token == TOKEN
    assert credentials.root_certificates is None
    monkeypatch.setenv("CUTWATCH_COLLECTOR", "127.0.0.1:1")
    given = cutwatch.CollectorCredentials(token="given-token-0123456789abcdef")
    assert agent("bank", collector_credentials=given)._control._credentials is given  # type: ignore[union-attr]
    assert agent("bank")._control._credentials.token == TOKEN  # type: ignore[union-attr]


def test_an_explicit_collector_takes_no_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """All or nothing: a variable left over never turns the code's connection into TLS, nor fails it."""
    monkeypatch.setenv("CUTWATCH_AGENT_TOKEN", "short")
    monkeypatch.setenv("CUTWATCH_CA_CERT", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("CUTWATCH_CLIENT_CERT", str(tmp_path / "missing-client.pem"))
    monkeypatch.setenv("CUTWATCH_SERVER_NAME", "collector.example")
    credentials = agent("bank", "127.0.0.1:1")._control._credentials  # type: ignore[union-attr]
    assert credentials == cutwatch.CollectorCredentials(), "plaintext and no token, as the code said"
    assert not credentials.tls


def test_nothing_set_means_no_credentials() -> None:
    assert credentials_from_env() is None


def test_bad_credentials_in_the_environment_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUTWATCH_COLLECTOR", "127.0.0.1:1")
    monkeypatch.setenv("CUTWATCH_AGENT_TOKEN", "short")
    with pytest.raises(SecurityConfigError, match="CUTWATCH_AGENT_TOKEN"):
        agent("bank")
    assert agent("bank", None).collector is None, "without a collector the token is not read"
    monkeypatch.delenv("CUTWATCH_AGENT_TOKEN")
    monkeypatch.setenv("CUTWATCH_CA_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(SecurityConfigError, match=r"CUTWATCH_CA_CERT.*missing\.pem"):
        agent("bank")


def test_tls_files_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("agent.example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    monkeypatch.setenv("CUTWATCH_CA_CERT", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("CUTWATCH_CLIENT_CERT", str(tmp_path / "client.pem"))
    monkeypatch.setenv("CUTWATCH_CLIENT_KEY", str(tmp_path / "client.key"))
    monkeypatch.setenv("CUTWATCH_SERVER_NAME", "collector.example")
    credentials = credentials_from_env()
    assert credentials is not None and credentials.tls and credentials.token is None
    assert credentials.certificate_chain == (tmp_path / "client.pem").read_bytes()
    assert credentials.server_name == "collector.example"
    monkeypatch.delenv("CUTWATCH_CLIENT_KEY")
    with pytest.raises(SecurityConfigError, match="CUTWATCH_CLIENT_CERT"):
        credentials_from_env()


@pytest.mark.parametrize("written", [None, "", "  \t", " {} "])
def test_the_agent_and_the_command_line_read_a_variable_alike(
    monkeypatch: pytest.MonkeyPatch, written: str | None
) -> None:
    """One rule (stripped; empty or blank is unset) for ``CUTWATCH_COLLECTOR`` and the tokens."""
    values = {
        "CUTWATCH_COLLECTOR": "10.0.0.1:7070",
        "CUTWATCH_AGENT_TOKEN": TOKEN,
        "CUTWATCH_READER_TOKEN": TOKEN,
    }
    given = written is not None and "{}" in written
    for name, value in values.items():
        if written is not None:
            monkeypatch.setenv(name, written.format(value))
        assert env_value(name) == (value if given else None)
    address = values["CUTWATCH_COLLECTOR"] if given else None
    assert agent("bank").collector == address

    @click.command()
    @collector_option
    def show(address: str) -> None:
        click.echo(address)

    assert cli_runner().invoke(show, []).output.strip() == (address or DEFAULT_LISTEN)
    assert env_tokens("CUTWATCH_AGENT_TOKEN") == ((TOKEN,) if given else ())
    assert reader_token_from_env() == ((TOKEN, "CUTWATCH_READER_TOKEN") if given else (None, None))
