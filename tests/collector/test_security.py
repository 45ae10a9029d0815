"""Tokens, TLS and mutual TLS at a real collector: who gets in, who is refused;
and that a refusal writes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from cli_runner import cli_runner
from ledger_service import Ledger
from polling import wait_until

from cutwatch.cli import main as cli_main
from cutwatch.collector import CollectorClient, CollectorError, CollectorServer, CollectorUnavailableError
from cutwatch.collector._client import CollectorAuthError
from cutwatch.proto import collector_pb2 as pb
from cutwatch.proto import collector_pb2_grpc as pb_grpc
from cutwatch.security import CollectorCredentials, CollectorSecurity, SecurityConfigError

TIMEOUT = 30.0
AGENT_TOKEN = "agent-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"


def row_counts(db: Path) -> dict[str, int]:
    """Rows in every table of the store, read through a separate connection."""
    with sqlite3.connect(db) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}


def data_rows(db: Path) -> int:
    return sum(count for table, count in row_counts(db).items() if table not in ("meta", "schema_version"))


def raw_register(
    address: str, metadata: tuple[tuple[str, str], ...], channel: grpc.Channel | None = None
) -> Any:
    """Open a control stream by hand, register and send one event; returns the error gRPC raised."""
    owned = channel is None
    channel = channel or grpc.insecure_channel(address)
    try:
        stub = pb_grpc.CollectorStub(channel)
        messages = [
            pb.AgentMessage(
                register=pb.Registration(process_id="intruder:1", service="intruder", protocol_version=1)
            ),
            pb.AgentMessage(seq=1, flushed=pb.Flushed(epoch=1)),
        ]
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stub.Control(iter(messages), metadata=metadata or None, timeout=TIMEOUT):
                pass
        return caught.value
    finally:
        if owned:
            channel.close()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[CollectorServer]:
    security = CollectorSecurity(agent_tokens=(AGENT_TOKEN,), reader_tokens=(READER_TOKEN,))
    server = CollectorServer(tmp_path / "cuts.db", listen="127.0.0.1:0", security=security).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ledgers() -> Iterator[Callable[..., Ledger]]:
    made: list[Ledger] = []

    def make(name: str, address: str, **options: Any) -> Ledger:
        ledger = Ledger(name, address, **options)
        made.append(ledger)
        return ledger

    try:
        yield make
    finally:
        for ledger in made:
            ledger.close()


def test_agents_and_readers_with_their_tokens_get_a_complete_cut(
    secured: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    credentials = CollectorCredentials(token=AGENT_TOKEN)
    a = ledgers("a", secured.address, collector_credentials=credentials)
    b = ledgers("b", secured.address, collector_credentials=credentials)
    assert a.agent.wait_registered(TIMEOUT) and b.agent.wait_registered(TIMEOUT)
    a.transfer(a.stub(b), 7).result(TIMEOUT)
    with CollectorClient(secured.address, credentials=CollectorCredentials(token=READER_TOKEN)) as client:
        cut = client.snapshot(timeout=TIMEOUT)
        assert cut.status == "COMPLETE", cut.reasons
        assert {cut.state_of(p)["balance"] for p in cut.states} == {93, 107}
        status = client.status()
    assert status["security"]["agent_token"] and status["security"]["reader_token"]
    assert status["security"]["refused_unauthenticated"] == 0


def test_every_wrong_credential_is_refused_and_nothing_is_written(
    secured: CollectorServer, ledgers: Callable[..., Ledger], tmp_path: Path
) -> None:
    db = tmp_path / "cuts.db"
    before = row_counts(db)
    bearer = "authorization"
    # No token, a wrong one, and a reader's token on the agents' stream.
    assert raw_register(secured.address, ()).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = raw_register(secured.address, ((bearer, "Bearer " + "x" * 32),))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    denied = raw_register(secured.address, ((bearer, "Bearer " + READER_TOKEN),))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "token for readers" in denied.details()
    # Readers: none, wrong, and an agent's token used for queries.
    for credentials in (None, CollectorCredentials(token="y" * 32), CollectorCredentials(token=AGENT_TOKEN)):
        with CollectorClient(secured.address, credentials=credentials) as client:
            for query in (client.snapshot, client.latest, client.status, client.list_cuts, client.results):
                with pytest.raises(CollectorAuthError, match=r"UNAUTHENTICATED|PERMISSION_DENIED"):
                    query()
    # An agent that presents the reader token never registers.
    intruder = ledgers(
        "intruder", secured.address, collector_credentials=CollectorCredentials(token=READER_TOKEN)
    )
    assert not intruder.agent.wait_registered(1.0)
    assert secured.coordinator.sessions() == []
    assert row_counts(db) == before
    assert data_rows(db) == 0
    with CollectorClient(secured.address, credentials=CollectorCredentials(token=READER_TOKEN)) as client:
        security = client.status()["security"]
    assert security["refused_unauthenticated"] >= 2 + 2 * 5
    assert security["refused_permission_denied"] >= 1 + 5 + 1


def test_the_command_line_reads_tokens_from_a_file_or_the_environment(
    secured: CollectorServer, tmp_path: Path
) -> None:
    runner = cli_runner()
    token_file = tmp_path / "reader.token"
    token_file.write_text(READER_TOKEN + "\n")
    args = ["status", "--collector", secured.address, "--json"]
    refused = runner.invoke(cli_main, args, env={"CUTWATCH_READER_TOKEN": "", "CUTWATCH_TOKEN": ""})
    assert refused.exit_code == 4, refused.output
    assert "UNAUTHENTICATED" in refused.output and "reader token" in refused.output
    assert runner.invoke(cli_main, [*args, "--token-file", str(token_file)]).exit_code == 0
    assert runner.invoke(cli_main, args, env={"CUTWATCH_READER_TOKEN": READER_TOKEN}).exit_code == 0
    wrong_role = runner.invoke(cli_main, args, env={"CUTWATCH_READER_TOKEN": AGENT_TOKEN})
    assert wrong_role.exit_code == 4 and "PERMISSION_DENIED" in wrong_role.output
    short = tmp_path / "short.token"
    short.write_text("abc")
    bad = runner.invoke(cli_main, [*args, "--token-file", str(short)])
    assert bad.exit_code == 2 and "16 to 4096 printable" in bad.output


def test_the_collector_command_refuses_unusable_security_settings(tmp_path: Path) -> None:
    runner = cli_runner()
    missing = runner.invoke(
        cli_main,
        [
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "c.db"),
            "--tls-cert",
            str(tmp_path / "no.pem"),
        ],
    )
    assert missing.exit_code == 6  # the collector could not start
    assert "cannot read the certificate" in missing.output
    with pytest.raises(SecurityConfigError, match="differ"):
        CollectorSecurity(agent_tokens=(AGENT_TOKEN,), reader_tokens=(AGENT_TOKEN,))
    with pytest.raises(SecurityConfigError, match="needs TLS"):
        CollectorSecurity(client_ca=b"pem")
    with pytest.raises(SecurityConfigError, match="private key"):
        CollectorCredentials(root_certificates=b"ca", certificate_chain=b"cert")


# TLS ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def tls_security(authority: trustme.CA, client_ca: trustme.CA | None = None) -> CollectorSecurity:
    cert = authority.issue_cert("127.0.0.1", "localhost")
    return CollectorSecurity(
        certificate_chain=cert.cert_chain_pems[0].bytes()
        + b"".join(p.bytes() for p in cert.cert_chain_pems[1:]),
        private_key=cert.private_key_pem.bytes(),
        client_ca=client_ca.cert_pem.bytes() if client_ca is not None else None,
        reader_tokens=(READER_TOKEN,),
        agent_tokens=(AGENT_TOKEN,),
    )


def client_credentials(
    authority: trustme.CA, token: str, client_ca: trustme.CA | None = None
) -> CollectorCredentials:
    chain = key = None
    if client_ca is not None:
        issued = client_ca.issue_cert("cutwatch-client@example.test")
        chain, key = issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()
    return CollectorCredentials(
        token=token, root_certificates=authority.cert_pem.bytes(), certificate_chain=chain, private_key=key
    )


def test_tls_serves_the_right_ca_and_refuses_plaintext_and_a_wrong_ca(
    authority: trustme.CA, tmp_path: Path, ledgers: Callable[..., Ledger]
) -> None:
    db = tmp_path / "cuts.db"
    with CollectorServer(db, listen="127.0.0.1:0", security=tls_security(authority)) as server:
        before = row_counts(db)
        with (
            CollectorClient(
                server.address, timeout=5.0, credentials=CollectorCredentials(token=READER_TOKEN)
            ) as client,
            pytest.raises(CollectorUnavailableError),
        ):
            client.status()
        other = trustme.CA()
        with (
            CollectorClient(
                server.address, timeout=5.0, credentials=client_credentials(other, READER_TOKEN)
            ) as client,
            pytest.raises(CollectorUnavailableError, match=r"TLS|cannot reach"),
        ):
            client.status()
        plain_agent = ledgers(
            "plain", server.address, collector_credentials=CollectorCredentials(token=AGENT_TOKEN)
        )
        assert not plain_agent.agent.wait_registered(1.0)
        assert row_counts(db) == before
        good = client_credentials(authority, AGENT_TOKEN)
        a = ledgers("a", server.address, collector_credentials=good)
        assert a.agent.wait_registered(TIMEOUT)
        with CollectorClient(
            server.address, credentials=client_credentials(authority, READER_TOKEN)
        ) as client:
            cut = client.snapshot(timeout=TIMEOUT)
            assert cut.status == "COMPLETE", cut.reasons
            assert list(cut.states) == [a.agent.process_id]
            assert client.status()["security"]["tls"] is True


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(
    authority: trustme.CA, tmp_path: Path, ledgers: Callable[..., Ledger]
) -> None:
    clients_ca = trustme.CA()
    db = tmp_path / "cuts.db"
    with CollectorServer(db, listen="127.0.0.1:0", security=tls_security(authority, clients_ca)) as server:
        before = row_counts(db)
        no_cert = client_credentials(authority, READER_TOKEN)
        foreign_cert = client_credentials(authority, READER_TOKEN, client_ca=trustme.CA())
        for credentials in (no_cert, foreign_cert):
            with (
                CollectorClient(server.address, timeout=5.0, credentials=credentials) as client,
                pytest.raises(CollectorUnavailableError),
            ):
                client.snapshot(timeout=2.0)
        stranger = ledgers(
            "stranger", server.address, collector_credentials=client_credentials(authority, AGENT_TOKEN)
        )
        assert not stranger.agent.wait_registered(1.0)
        assert row_counts(db) == before
        # With a certificate of the clients' CA, but the wrong token, the token check still applies.
        mtls_wrong_token = client_credentials(authority, AGENT_TOKEN, client_ca=clients_ca)
        with (
            CollectorClient(server.address, credentials=mtls_wrong_token) as client,
            pytest.raises(CollectorAuthError, match="PERMISSION_DENIED"),
        ):
            client.status()
        a = ledgers(
            "a", server.address, collector_credentials=client_credentials(authority, AGENT_TOKEN, clients_ca)
        )
        assert a.agent.wait_registered(TIMEOUT)
        with CollectorClient(
            server.address, credentials=client_credentials(authority, READER_TOKEN, clients_ca)
        ) as client:
            assert client.snapshot(timeout=TIMEOUT).status == "COMPLETE"
            wait_until(lambda: client.status()["security"]["mutual_tls"], "mutual TLS shown in status")
        assert data_rows(db) > 0


def test_a_refused_agent_keeps_serving_its_application(
    secured: CollectorServer, ledgers: Callable[..., Ledger]
) -> None:
    wrong = CollectorCredentials(token="z" * 40)
    a = ledgers("a", secured.address, collector_credentials=wrong)
    b = ledgers("b", secured.address, collector_credentials=wrong)
    for _ in range(20):
        a.transfer(a.stub(b), 1).result(TIMEOUT)
    assert (a.balance, b.balance) == (80, 120)
    assert not a.agent.stats().collector_connected
    agent_token = CollectorCredentials(token=AGENT_TOKEN)
    with CollectorClient(secured.address, credentials=agent_token) as client, pytest.raises(CollectorError):
        client.status()


def test_text_from_peers_is_escaped_for_logs_and_terminals() -> None:
    from cutwatch.core import shown

    assert shown("bank:a.12") == "bank:a.12"
    assert shown("é😀") == "é😀"
    assert shown("x\x1b[31mred\nfake log line\x00") == "x\\x1b[31mred\\nfake log line\\x00"
    assert shown("y" * 1000, limit=10) == "y" * 10 + "..."
