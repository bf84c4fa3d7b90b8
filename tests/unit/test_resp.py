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
