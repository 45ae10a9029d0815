"""``cutwatch.Agent()`` reads what it is not given from the environment; arguments always win."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

import cutwatch
from cutwatch.agent._settings import credentials_from_env, service_from_env
from cutwatch.security import SecurityConfigError

TOKEN = "agent-token-0123456789abcdef"
VARIABLES = (
    "CUTWATCH_SERVICE",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "CUTWATCH_COLLECTOR",
    "CUTWATCH_AGENT_TOKEN",
    "CUTWATCH_CA_CERT",
    "CUTWATCH_CLIENT_CERT",
    "CUTWATCH_CLIENT_KEY",
    "CUTWATCH_SERVER_NAME",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


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


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CUTWATCH_SERVICE", "my service", "CUTWATCH_SERVICE"),
        ("OTEL_SERVICE_NAME", "a/b", "OTEL_SERVICE_NAME"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=a%20b", "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_a_bad_service_name_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=named):
        agent()


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
    given = cutwatch.CollectorCredentials(token="given-token-0123456789abcdef")
    assert agent("bank", "127.0.0.1:1", collector_credentials=given)._control._credentials is given  # type: ignore[union-attr]
    assert agent("bank", "127.0.0.1:1")._control._credentials.token == TOKEN  # type: ignore[union-attr]


def test_nothing_set_means_no_credentials() -> None:
    assert credentials_from_env() is None


def test_bad_credentials_in_the_environment_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUTWATCH_AGENT_TOKEN", "short")
    with pytest.raises(SecurityConfigError, match="CUTWATCH_AGENT_TOKEN"):
        agent("bank", "127.0.0.1:1")
    assert agent("bank", None).collector is None, "without a collector the token is not read"
    monkeypatch.delenv("CUTWATCH_AGENT_TOKEN")
    monkeypatch.setenv("CUTWATCH_CA_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(SecurityConfigError, match=r"CUTWATCH_CA_CERT.*missing\.pem"):
        agent("bank", "127.0.0.1:1")


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
