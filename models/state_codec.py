"""The lean stored form of a customer state: what Redis holds in ``seg:state:{<id>}``.

A lean state leaves to the customer hash what it holds as live traits (:data:`TRAIT_FIELDS`,
read back from there) and packs the rest in as few bytes as exactness allows, since it is
most of a customer's memory in Redis (target: 1 KiB per customer with the hash):

``[7]\\x00`` (a JSON head a reader of an older version parses and refuses as a newer
schema, never misreads), the length of the integer section, then

- the integer section: unsigned LEB128 varints (7 bits a byte), signed ones zig-zag coded:
  number of seen ids, partition, offset, the bit mask of the counters that are not 0, the
  lateness floor and every seen id's time as differences (to the last event, then to the
  previous id's time: ids arrive about in time order, so most take 2–3 bytes instead of 4),
  spend, the categories (by their place among the favourite categories the hash holds, else
  by name), and the event windows (type, then per day: days back from the previous day,
  count and sum);
- the float64s (little-endian): the counters that are not 0, the category weights, and any
  spend or window sum that is no whole number of cents;
- the seen ids, 48-bit little-endian (:func:`models.events.event_id_hash`; schema 6 kept
  them in 64 bits: read back masked).

A number that may be fractional (spend, a window's count or sum) is a varint ``n << 2 |
kind``: kind 0 a whole number ``n``, kind 1 ``n`` cents (taken only when ``n / 100`` gives
back the same float), kind 2 a float64 of the float section: exact in every case.
Schema 6 (8-byte ids) and schema 5 (a JSON head) are still read (:func:`unpack_lean5`).

Examples
--------
>>> from models.state import CustomerState
>>> s = CustomerState("c1")
>>> s.last_ts, s.spend_total, s.counters[6], s.categories = 10**12, 25.5, 0.5, {"a": 1.0}
>>> s.windows = {"purchase": {11574: [1.0, 25.5]}}
>>> blob = pack_lean(s, top=["a"])
>>> t = CustomerState("c1")
>>> unpack_lean(t, blob, {"last_seen": 10**12, "categories": ["a"]})
>>> (t.spend_total, t.categories, t.windows) == (25.5, {"a": 1.0}, s.windows), len(blob)
(True, 39)
"""

from __future__ import annotations

import itertools
import math
import operator
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ID_MASK", "LEAN6_FRAME", "LEAN_FRAME", "LEAN_SCHEMA", "TRAIT_FIELDS", "masked",
           "pack_lean", "unpack_lean", "unpack_lean5"]

LEAN_SCHEMA = 7
"""Version of the lean form this module writes (6: ids in 64 bits; 5: a JSON head)."""
LEAN_FRAME = b"[7]\x00"
LEAN6_FRAME = b"[6]\x00"
ID_MASK = (1 << 48) - 1
"""Seen ids keep 48 bits (:func:`models.events.event_id_hash`)."""
TRAIT_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("first_seen", "first_ts", 0), ("last_seen", "last_ts", 0),
    ("last_purchase", "last_purchase_ts", 0), ("orders", "orders_total", 0),
    ("events", "events_total", 0), ("country", "country", None), ("region", "region", None),
    ("age", "age", None), ("income", "income", None), ("household_size", "household", None),
    ("gender", "gender", None), ("device", "device", None), ("channel", "channel", None),
)
"""Trait name in the customer hash, attribute, value when absent: what a lean state leaves
to the hash (``models.traits`` writes them exactly: integers, floats in full, strings)."""
EVENT_TYPES = ("purchase", "page_view", "product_view", "search", "add_to_cart",
               "remove_from_cart", "checkout", "session_start")
"""Window event types stored by their place here (append only: stored states refer to it);
another type is stored by name."""
_TYPE_AT = {t: i for i, t in enumerate(EVENT_TYPES)}
N_COUNTERS = 16
"""Decayed counters per customer (``CustomerState.counters``)."""
DAY_MS = 86_400_000
_EXACT = 2 ** 53  # integers beyond lose their units digit as floats
_BIG_ENDIAN = sys.byteorder == "big"
_BITS = tuple(1 << i for i in range(N_COUNTERS))  # counter i's bit in the mask
_SMALL = [bytes((n,)) for n in range(0x80)]  # one-byte varints


def _zz(n: int) -> int:
    """Zig-zag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ... (small magnitudes, small varints)."""
    return n << 1 if n >= 0 else ~(n << 1)


def _unzz(z: int) -> int:
    return z >> 1 if not z & 1 else ~(z >> 1)


def _num(out: list[int], floats: list[float], x: float) -> None:
    """Append ``x`` as a number varint (module docstring), exactly."""
    if x == 0:
        if math.copysign(1.0, x) > 0:
            out.append(0)
            return
    elif math.isfinite(x):
        n = int(x)
        if n == x and -_EXACT < n < _EXACT:
            out.append(_zz(n) << 2)
            return
        c = round(x * 100)
        if c / 100 == x and -_EXACT < c < _EXACT:
            out.append(_zz(c) << 2 | 1)
            return
    out.append(2)
    floats.append(float(x))


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    put = out.append
    for x in values:  # unrolled for the common sizes: this runs for every write
        if x < 0x80:
            put(x)
        elif x < 0x4000:
            put(x & 0x7F | 0x80)
            put(x >> 7)
        elif x < 0x200000:
            put(x & 0x7F | 0x80)
            put(x >> 7 & 0x7F | 0x80)
            put(x >> 14)
        else:
            while x > 0x7F:
                put(x & 0x7F | 0x80)
                x >>= 7
            put(x)
    return bytes(out)


def _unvarints(raw: bytes) -> list[int]:
    out, x, shift = [], 0, 0
    for b in raw:
        if b & 0x80:
            x |= (b & 0x7F) << shift
            shift += 7
        else:
            out.append(x | b << shift)
            x = shift = 0
    return out


def _put_name(out: list[int], name: str, places: Mapping[str, int]) -> None:
    # a name by its place in a table both sides know, or inline (what ``name`` in
    # :func:`unpack_lean` reads back)
    place = places.get(name)
    if place is None:
        raw = name.encode()
        out += (len(raw) << 1 | 1, *raw)
    else:
        out.append(place << 1)


def pack_lean(s: Any, top: Sequence[str] = ()) -> bytes:
    """The lean form of the state ``s`` (a :class:`models.state.CustomerState`); ``top``:
    the favourite categories the customer hash holds beside it."""
    # (runs for every written customer: C-level loops where they do the same)
    last, times, counters = s.last_ts, s.seen_ms, s.counters
    floats = list(itertools.compress(counters, counters))  # those that are not 0
    partition, offset = s.partition, s.offset
    ints = [len(times), partition << 1 if partition >= 0 else ~(partition << 1),
            offset << 1 if offset >= 0 else ~(offset << 1),
            sum(itertools.compress(_BITS, counters)),
            _zz(last - s.floor_ms) + 1 if s.floor_ms else 0]
    # each id's time after the previous one's (the first: before the last event), zig-zag
    ints += [d << 1 if d >= 0 else ~(d << 1)
             for d in map(operator.sub, itertools.chain((last,), times), times)]
    _num(ints, floats, s.spend_total)
    cats = s.categories
    ints.append(len(cats))
    if cats:
        at = {name: i for i, name in enumerate(top)}
        for name in cats:
            _put_name(ints, name, at)
        floats += cats.values()
    windows = [(t, days) for t, days in s.windows.items() if days]
    ints.append(len(windows))
    for etype, days in windows:
        _put_name(ints, etype, _TYPE_AT)
        ints.append(len(days))
        prev = last // DAY_MS
        for day in sorted(days):
            count, amount = days[day]
            ints.append(_zz(prev - day))
            prev = day
            if 0 <= count < 1 << 20 and count % 1 == 0:  # what counts always are: inline
                ints.append(int(count) << 3)
            else:
                _num(ints, floats, count)
            if amount == 0 and math.copysign(1.0, amount) > 0:  # any type but purchases
                ints.append(0)
            else:
                _num(ints, floats, amount)
    head = _varints(ints)
    n = len(head)
    ids = s.seen_ids
    if _BIG_ENDIAN:
        ids = array("Q", ids)
        ids.byteswap()
    raw = ids.tobytes()  # little-endian: each id's low 6 bytes (the rest are 0)
    return b"".join((LEAN_FRAME, _varints([n]) if n >= 0x80 else _SMALL[n], head,
                     struct.pack(f"<{len(floats)}d", *floats),
                     b"".join([raw[i:i + 6] for i in range(0, len(raw), 8)])))


def _read_traits(s: Any, traits: Mapping[str, Any] | None) -> list[str]:
    known = traits or {}
    for name, attr, absent in TRAIT_FIELDS:
        setattr(s, attr, known.get(name, absent))
    return list(known.get("categories") or [])


def unpack_lean(s: Any, blob: bytes, traits: Mapping[str, Any] | None = None) -> None:
    """Fill the new state ``s`` from ``blob`` (:func:`pack_lean`) and the ``traits`` stored
    beside it (typed, by their trait names)."""
    top = _read_traits(s, traits)
    pos, size, shift = len(LEAN_FRAME), 0, 0
    while True:  # the integer section's length
        b = blob[pos]
        pos += 1
        size |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    it = iter(_unvarints(blob[pos:pos + size]))
    pos += size
    n_ids = next(it)
    width = 6 if blob[:len(LEAN_FRAME)] == LEAN_FRAME else 8  # schema 6: 64-bit ids
    floats = struct.unpack_from(f"<{(len(blob) - pos - width * n_ids) // 8}d", blob, pos)
    f = 0
    s.partition, s.offset, mask, floor = _unzz(next(it)), _unzz(next(it)), next(it), next(it)
    last = s.last_ts
    s.floor_ms = last - _unzz(floor - 1) if floor else 0
    prev, times = last, []
    for _ in range(n_ids):
        prev -= _unzz(next(it))
        times.append(prev)
    s.seen_ms = array("q", times)
    for i in range(N_COUNTERS):
        if mask >> i & 1:
            s.counters[i] = floats[f]
            f += 1

    def num() -> float:
        nonlocal f
        h = next(it)
        kind, n = h & 3, _unzz(h >> 2)
        if kind == 2:
            f += 1
            return floats[f - 1]
        return float(n) if kind == 0 else n / 100

    def name(table: Sequence[str]) -> str:
        ref = next(it)
        if not ref & 1:
            return table[ref >> 1]
        return bytes(next(it) for _ in range(ref >> 1)).decode()

    s.spend_total = num()
    cats = {}
    for _ in range(next(it)):
        key = name(top)
        cats[key] = floats[f]
        f += 1
    s.categories = cats
    for _ in range(next(it)):
        etype, days, prev = name(EVENT_TYPES), {}, last // DAY_MS
        for _ in range(next(it)):
            prev -= _unzz(next(it))
            days[prev] = [num(), num()]
        s.windows[etype] = days
    raw = blob[len(blob) - width * n_ids:]
    if width == 6:
        raw = b"".join([raw[i:i + 6] + b"\0\0" for i in range(0, len(raw), 6)])
    s.seen_ids.frombytes(raw)
    if _BIG_ENDIAN:
        s.seen_ids.byteswap()
    if width == 8:
        s.seen_ids = masked(s.seen_ids)


def masked(ids: array[int]) -> array[int]:
    """Seen ids of a state written before schema 7 as the 48-bit hashes of today.

    >>> list(masked(array("Q", [2**64 - 1, 5])))
    [281474976710655, 5]
    """
    return array("Q", [i & ID_MASK for i in ids]) if any(i > ID_MASK for i in ids) else ids


def unpack_lean5(s: Any, head: list[Any], blob: bytes, cut: int,
                 traits: Mapping[str, Any] | None) -> tuple[int, int, int | None]:
    """Fill ``s`` from the JSON ``head`` of a schema-5 state (up to the NUL at ``cut``) and
    the counters and category weights that follow it; return where its seen ids start,
    the floor and the base of their times (as schema 4 has them)."""
    _, s.partition, s.offset, s.spend_total, names, floor, base, mask = head[:8]
    if len(head) > 8:
        s.windows = {t: {int(d): [n, amt] for d, n, amt in rows} for t, rows in head[8].items()}
    top = _read_traits(s, traits)
    names = [top[n] if isinstance(n, int) else n for n in names]
    floor = s.last_ts - floor if floor is not None else 0
    base = s.last_ts - base if base is not None else None
    nonzero = [i for i in range(N_COUNTERS) if mask >> i & 1]
    weights = struct.unpack_from(f"<{len(nonzero) + len(names)}d", blob, cut + 1)
    for i, v in zip(nonzero, weights, strict=False):
        s.counters[i] = v
    s.categories = dict(zip(names, weights[len(nonzero):], strict=True))
    return cut + 1 + 8 * len(weights), floor, base
