"""The C-packed script calls (stream.resp) are the bytes redis-py's pipeline sends."""

from redis.asyncio.connection import Connection

from stream.resp import pack_evalsha


def test_pack_evalsha_is_what_redis_py_sends() -> None:
    conn = Connection()
    calls = [
        ("seg:state:{c1}", "seg:customer:{c1}", 3, 1234567890123, b"3:7:\x00\xff\r\n",
         "s2", 0.8734, 12, 1_700_000_000_000, "Big spenders", "", b"orders\x1f2", "Champions",
         "e-\u00e9\u4e2d", "event", "c1", 10000, '["a1"]', 4, b""),
        ("k", -5, 0.0, 1.0, 1e20, 1 / 3, 1e-7, -0.25, 2**63 - 1, "", "x" * 70000),
    ]
    for nkeys, call in enumerate(calls):
        expected = b"".join(conn.pack_command("EVALSHA", "ab" * 20, nkeys, *call))
        assert pack_evalsha("ab" * 20, nkeys, [call]) == expected
    assert pack_evalsha("ab" * 20, 2, calls) == b"".join(
        b"".join(conn.pack_command("EVALSHA", "ab" * 20, 2, *c)) for c in calls)


def test_silent_server_times_out_and_drops_the_connection() -> None:
    import asyncio

    import pytest
    import redis.asyncio as aioredis
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from stream.resp import evalsha_many

    async def scenario() -> None:
        got: list[bytes] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while b"EVALSHA" not in (data := await reader.read(65536)):
                # the client's handshake (RESP3) is answered: HELLO, then plain OKs
                writer.write(b"%1\r\n+proto\r\n:3\r\n" if b"HELLO" in data else b"+OK\r\n")
            got.append(data)  # the calls: read, never answered
            await reader.read()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = aioredis.Redis(port=port, socket_timeout=0.2)
        try:
            with pytest.raises(RedisTimeoutError, match="2 replies missing"):
                await evalsha_many(client, "ab" * 20, 1, [("k1", 1), ("k2", 2)])
            assert got and got[0].startswith(b"*5\r\n$7\r\nEVALSHA\r\n")
            pool = client.connection_pool
            assert all(not c.is_connected for c in pool._available_connections)
        finally:
            await client.aclose()
            server.close()

    asyncio.run(scenario())
