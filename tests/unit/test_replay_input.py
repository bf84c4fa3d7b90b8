"""Reading files for ``segmenter replay`` (no servers): formats, gzip, CSV columns, --map,
line numbers, reasons; the partitioner; key-less validation in and out of the helper."""

from __future__ import annotations

import asyncio
import gzip
import io
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from stream.columns import ColumnPlan, parse_offset
from stream.errors import SegmenterError
from stream.parsing import Validator
from stream.produce import BatchSender
from stream.replay import Summary, reason_kind
from stream.sources import open_events, read_mapping, source_text

ORDERS = ("InvoiceNo;CustomerID;InvoiceDate;Price;StockCode;Quantity;traits.age\n"
          "536365;17850;1997-01-01 08:26;15.30;85123A;6;41\n"
          "\n"
          '536366;13047;1997-01-02T09:00:00-05:00;2;007;"1\n2";\n')
MAP = {"InvoiceNo": "event_id", "CustomerID": "customer_id", "InvoiceDate": "timestamp",
       "Price": "properties.amount", "StockCode": "product_id"}


def lines(path: Path, **kw: object) -> list[tuple[int, object, str | None, object]]:
    f = open_events(str(path), **kw)  # type: ignore[arg-type]
    try:
        return [(n, orjson.loads(v) if v else None, reason, src)
                for n, v, reason, src in f.lines()]
    finally:
        f.close()


def test_csv_columns_map_type_tz_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS)
    out = lines(path, mapping=MAP, default_type="purchase", tz="+01:00")
    assert [n for n, *_ in out] == [2, 5]  # blank line skipped; a quoted newline spans 4-5
    first, second = out[0][1], out[1][1]
    assert first == {"event_id": "536365", "customer_id": "17850", "type": "purchase",
                     "timestamp": "1997-01-01T08:26:00+01:00",
                     "properties": {"amount": 15.3, "product_id": "85123A", "Quantity": 6},
                     "traits": {"age": 41}}
    assert second["timestamp"] == "1997-01-02T09:00:00-05:00"  # had an offset: kept
    assert second["properties"] == {"amount": 2, "product_id": "007", "Quantity": "1\n2"}


def test_csv_gzip_by_magic_bytes_and_format_by_content(tmp_path: Path) -> None:
    path = tmp_path / "export.dat"  # neither suffix says gzip or CSV
    path.write_bytes(gzip.compress(ORDERS.encode()))
    f = open_events(str(path), mapping=MAP, default_type="purchase", tz="Z")
    assert f.gzipped and f.fmt == "csv"
    assert [n for n, *_ in f.lines()] == [2, 5]
    assert f.position() == f.size  # progress counts compressed bytes
    f.close()


def test_jsonl_gzip_by_suffix_passes_lines_unchanged(tmp_path: Path) -> None:
    raw = [b'{"event_id":"e1","customer_id":"c1","type":"search","timestamp":0}',
           b"not json", b'{"event_id":"e2"}']
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(raw) + b"\n\n"))
    f = open_events(str(path))
    assert f.fmt == "jsonl"
    assert [(n, v) for n, v, _, _ in f.lines()] == [(1, raw[0]), (2, raw[1]), (3, raw[2])]
    f.close()


def test_jsonl_rewritten_by_map_and_type(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"id":"e1","user":"c1","ts":"2001-02-03T04:05:06","total":9}\n{]\n')
    out = lines(path, mapping={"id": "event_id", "user": "customer_id", "ts": "timestamp",
                               "total": "properties.amount"}, default_type="purchase",
                tz="Z")
    assert out[0][1] == {"event_id": "e1", "customer_id": "c1", "type": "purchase",
                         "timestamp": "2001-02-03T04:05:06+00:00",
                         "properties": {"amount": 9}}
    assert out[1][1] is None and "not valid UTF-8 JSON" in str(out[1][2])


def test_csv_rows_that_cannot_be_read_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"event_id,customer_id,type,timestamp\n"
                     b"e1,c1,search,0\n"
                     b"e2,c\xff,search,0\n"
                     b"e3,c3,search,0,extra\n")
    out = lines(path)
    assert [(n, r) for n, _, r, _ in out] == [
        (2, None), (3, "line is not valid utf-8"), (4, "row has 5 cells, the header 4")]
    assert source_text(out[2][3]) == "e3,c3,search,0,extra"


def test_csv_without_event_id_gets_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("customer_id,timestamp,amount\nc1,0,5\nc2,1,6\n")
    out = lines(path, default_type="purchase")
    assert [e["event_id"] for _, e, _, _ in out] == ["log.csv:2", "log.csv:3"]  # type: ignore


@pytest.mark.parametrize(("header", "options", "message"), [
    ("event_id,timestamp,type", {}, "no customer_id column"),
    ("event_id,customer_id,type", {}, "no timestamp column"),
    ("event_id,customer_id,timestamp", {}, "give the type of every row with --type"),
    ("a,b", {"mapping": {"Nope": "event_id"}}, "--map Nope=...: no column 'Nope'"),
])
def test_header_problems_are_named(tmp_path: Path, header: str, options: dict[str, object],
                                   message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(header + "\nx,y,z\n")
    with pytest.raises(SegmenterError, match=None) as info:
        lines(path, **options)
    assert message in str(info.value)


def test_option_errors() -> None:
    with pytest.raises(SegmenterError, match="SOURCE=FIELD"):
        read_mapping(["nothing"])
    with pytest.raises(SegmenterError, match="UTC offset"):
        parse_offset("Europe/Berlin")
    with pytest.raises(SegmenterError, match="no such file"):
        open_events("/nonexistent/file.csv")


def test_column_names_match_any_case() -> None:
    plan = ColumnPlan.from_header(["Event_ID", "CUSTOMER_ID", "Type", "TimeStamp", "Amount"],
                                  {}, None, None)
    assert plan.event(["e", "c", "purchase", "5", "1.5"], 2) == {
        "event_id": "e", "customer_id": "c", "type": "purchase", "timestamp": 5,
        "properties": {"amount": 1.5}}


def test_reasons_group_by_kind_and_summary_lists_lines() -> None:
    s = Summary("f.csv", "events", lines=5, sent=2, elapsed_s=2.0)
    for n, ts in ((2, "'1999-01-01T00:00'"), (4, "'2001-01-01T00:00'")):
        s.reject(n, f"timestamp {ts} has no UTC offset")
    s.reject(5, "missing field 'customer_id'")
    assert s.rejected == 3 and len(s.invalid) == 2
    text = s.render("rejects.jsonl")
    assert "sent                2 to topic events" in text
    assert "invalid             3 (not sent, written to rejects.jsonl)" in text
    assert "timestamp … has no UTC offset (lines 2, 4)" in text
    assert "e.g. line 2: timestamp '1999-01-01T00:00' has no UTC offset" in text
    assert reason_kind("message is 70000 bytes, over the 65536 limit") == \
        "message is … bytes, over the 65536 limit"


def test_partitions_are_kafkas_default() -> None:
    sender = BatchSender(None, "events", [0, 1, 2, 3, 4, 5])  # type: ignore[arg-type]
    for key in (b"c1", b"customer-42", "ü/{x}".encode(), b""):
        assert sender.partition(key) == DefaultPartitioner()(key, list(range(6)), [])


def test_key_less_validation_same_in_helper_and_inline() -> None:
    values: list[bytes | None] = [
        b'{"event_id":"e1","customer_id":"c1","type":"search","timestamp":852076800000}',
        b'{"event_id":"e2","customer_id":"c2","type":"search","timestamp":-1}',
        b'{"event_id":"e3","customer_id":"c3","type":"search","timestamp":99999999999999}',
        None]

    async def both() -> tuple[object, object, bool]:
        helper = Validator(True, max_future_s=60)
        await helper.start()
        try:
            return (await helper.customer_ids(values),
                    await Validator(False, max_future_s=60).customer_ids(values),
                    helper.running)
        finally:
            helper.close()

    in_helper, inline, ran = asyncio.run(both())
    assert ran and in_helper == inline
    ids, reasons = inline  # type: ignore[misc]
    assert ids == ["c1", "", "", ""]
    assert "before the Unix epoch" in reasons[1] and "ahead of the clock" in reasons[2]
    assert "tombstone" in reasons[3]


def test_progress_line_has_rate_and_eta() -> None:
    from stream.progress import Progress

    out = io.StringIO()
    p = Progress(1000, out)
    p.started -= 2.0
    p.show(250, 5000, 3, force=True)
    line = out.getvalue()
    assert "25%" in line and "5,000 events" in line and "3 invalid" in line
    assert "/s" in line and "ETA 0:00:06" in line
