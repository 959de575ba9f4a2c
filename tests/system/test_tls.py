"""`rediss://`: nodes talk to a redis-server that speaks only TLS on loopback, with
certificates this test makes. A self-signed server is reached with `?ssl_cert_reqs=none`
(managed Redis such as Heroku's) or verified against its CA with `?ssl_ca_certs=`."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests
from cluster_ha import PASSWORD, cluster_args, create_cluster, free_cluster_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import ChatClient, wait_until
from processes import RedisServer, free_port


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signs for localhost and 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat_app test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, paths["key"])
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path):
    """redis-server with TLS only (`--port 0`), client certificates not required."""
    certs = make_certificates(tmp_path / "certs")
    port = free_port()
    args = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(tmp_path), "--tls-auth-clients", "no"]
    args += ["--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"])]
    args += ["--tls-ca-cert-file", str(certs["ca"])]
    log = open(tmp_path / "redis-tls.log", "ab")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def ping() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited: {(tmp_path / 'redis-tls.log').read_text()}")
        try:
            client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(certs["ca"]), socket_timeout=0.5)
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(ping, timeout=10, what="TLS redis-server")
        yield port, certs
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def cross_node_message(nodes, url: str, **env: str) -> None:
    a = nodes.start(url, **env)
    b = nodes.start(url, **env)
    alice = ChatClient(a.url, "alice")
    bob = ChatClient(b.url, "bob")
    try:
        alice.call("join_room", "secure")
        assert bob.call("join_room", "secure")["members"] == ["alice", "bob"]
        assert alice.call("send_message", {"room": "secure", "message": "over TLS"})["ok"]
        got = bob.wait_for(1)
        assert (got[0]["message"], got[0]["instance_id"]) == ("over TLS", a.instance_id)
    finally:
        alice.close()
        bob.close()


def test_self_signed_tls_redis_with_ssl_cert_reqs_none(tls_redis, nodes) -> None:
    port, _ = tls_redis
    cross_node_message(nodes, f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")


def test_self_signed_tls_redis_with_the_setting_leaving_the_url_alone(tls_redis, nodes) -> None:
    """Heroku attaches and rotates REDIS_URL itself: the setting is the way to relax it."""
    port, _ = tls_redis
    cross_node_message(nodes, f"rediss://127.0.0.1:{port}/0", REDIS_SSL_CERT_REQS="none")


def test_tls_redis_verified_against_its_ca(tls_redis, nodes) -> None:
    port, certs = tls_redis
    cross_node_message(nodes, f"rediss://localhost:{port}/0?ssl_ca_certs={quote(str(certs['ca']))}")


def test_unverifiable_certificate_is_refused_by_default(tls_redis, nodes, tmp_path: Path) -> None:
    """Without ssl_cert_reqs=none the node checks the certificate and so cannot connect: not
    the 503 of a node that has not subscribed yet, a refusal that lasts and says why."""
    port, _ = tls_redis
    node = nodes.start(f"rediss://127.0.0.1:{port}/0", wait_healthy=False)
    wait_until(lambda: _healthz(node.url), timeout=30, what="the node answering /healthz")
    [down] = wait_until(
        lambda: [line for line in node.log().splitlines() if "event=listener_down" in line],
        timeout=10,
        what="the listener's failure in the log",
    )
    assert "CERTIFICATE_VERIFY_FAILED" in down, down
    # It keeps trying (Redis logs each handshake the node broke off), and keeps failing.
    refusals = (tmp_path / "redis-tls.log").read_text().count("unknown ca")
    wait_until(
        lambda: (tmp_path / "redis-tls.log").read_text().count("unknown ca") >= refusals + 3,
        timeout=10,
        what="three more attempts refused",
    )
    status, body = _healthz(node.url)
    assert status == 503 and body["listener"] is False and "listener" in body["failing"], body


def _healthz(url: str) -> tuple[int, dict] | None:
    try:
        response = requests.get(f"{url}/healthz", timeout=30)
    except requests.ConnectionError:
        return None  # not listening yet
    return response.status_code, response.json()


def test_redis_ssl_cert_reqs_only_touches_rediss_urls_without_their_own() -> None:
    from chat_app import Settings
    from chat_app.backends.redis.clients import effective_redis_url

    def url(raw: str, reqs: str | None = "none") -> str:
        return effective_redis_url(Settings(redis_url=raw, redis_ssl_cert_reqs=reqs))

    assert url("rediss://:pw@h:6380/0") == "rediss://:pw@h:6380/0?ssl_cert_reqs=none"
    assert url("rediss://h/0?socket_timeout=3") == "rediss://h/0?socket_timeout=3&ssl_cert_reqs=none"
    assert url("rediss://h/0?ssl_cert_reqs=required") == "rediss://h/0?ssl_cert_reqs=required"
    assert url("redis://h/0") == "redis://h/0"
    assert url("rediss://h/0", None) == "rediss://h/0"


def test_a_cluster_that_speaks_only_tls_to_clients(tmp_path: Path, nodes) -> None:
    """REDIS_TLS=1 with REDIS_TLS_CA_FILE and REDIS_PASSWORD: every connection of the nodes
    (commands, publisher, sharded subscribers, the slot-map probes) speaks verified TLS to a
    password-protected cluster, whose TLS ports are all the nodes are told of. CLUSTER SLOTS
    asked over TLS names TLS ports, so a part that spoke plain text to one would fail."""
    certs = make_certificates(tmp_path / "certs")
    tls = ["--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"])]
    tls += ["--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no", "--tls-cluster", "yes"]
    servers, tls_ports = [], []
    for i in range(3):
        tls_ports.append(free_port())
        args = [*cluster_args(), *tls, "--tls-port", str(tls_ports[-1])]
        servers.append(RedisServer(tmp_path / f"shard{i}", free_cluster_port(), args, password=PASSWORD))
    try:
        for server in servers:
            server.start()  # the test's own checks use the plain ports
        create_cluster(servers, password=PASSWORD)
        env = {
            "REDIS_CLUSTER_NODES": ",".join(f"localhost:{port}" for port in tls_ports),
            "REDIS_PASSWORD": PASSWORD,
            "REDIS_TLS": "1",
            "REDIS_TLS_CA_FILE": str(certs["ca"]),
        }
        cross_node_message(nodes, "", **env)
        on_tls = tuple(f":{port}" for port in tls_ports)
        clients = [c for s in servers for c in s.client().client_list()]
        assert any(c.get("laddr", "").endswith(on_tls) for c in clients), "the nodes came in on the TLS ports"
    finally:
        for server in servers:
            server.stop()
