"""Reading and cleaning files with polars: every rule, counted once, no servers needed."""
import math
from datetime import datetime, timezone

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from app.files import cleaning
from app.files.cleaning import DUPLICATE_KEY, RULES, InvalidFile, clean, read_csv, rules_for
from app.files.contract import FILE_TYPES, ORDER_ITEMS, ORDERS, PRODUCTS, file_type_for

GOOD = {
    "products": {"id": "P1", "sku": "S1", "cost": "1.50", "category": "Jeans", "name": "N",
                 "brand": "B", "retail_price": "3.00", "department": "Men"},
    "orders": {"order_id": "O1", "user_id": "U1", "status": "complete",
               "created_at": "2024-01-01T10:00:00Z", "returned_at": "", "shipped_at": "",
               "delivered_at": "", "num_of_item": "1"},
    "order_items": {"id": "I1", "order_id": "O1", "user_id": "U1", "product_id": "P1",
                    "status": "complete", "created_at": "2024-01-01T10:00:00Z",
                    "shipped_at": "", "delivered_at": "", "returned_at": "", "sale_price": "9.99"},
}
# For every rule: values that break it (and no other rule).
BREAKING = {
    ("products", "missing_key"): [{"id": " "}],
    ("products", "cost_not_positive"): [{"cost": "0"}, {"cost": "-1"}, {"cost": "abc"},
                                        {"cost": ""}, {"cost": "1e3"}],
    ("products", "retail_price_not_positive"): [{"retail_price": "0.00"}, {"retail_price": "x"}],
    ("orders", "missing_key"): [{"order_id": ""}],
    ("orders", "created_at_unparsable"): [{"created_at": "yesterday"}, {"created_at": ""},
                                          {"created_at": "2024-13-01T00:00:00Z"}],
    ("orders", "num_of_item_not_positive"): [{"num_of_item": "0"}, {"num_of_item": "two"},
                                             {"num_of_item": "-2"}],
    ("order_items", "missing_key"): [{"id": ""}],
    ("order_items", "missing_product_id"): [{"product_id": "  "}],
    ("order_items", "sale_price_not_positive"): [{"sale_price": "0"}, {"sale_price": "-0.01"},
                                                 {"sale_price": "free"}],
    ("order_items", "created_at_unparsable"): [{"created_at": "01/02/2024"}],
}


def csv_bytes(file_type, rows, extra_columns=()):
    columns = list(file_type.columns) + list(extra_columns)
    lines = [",".join(columns)] + [",".join(row.get(c, "x") for c in columns) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def test_every_rule_is_exercised_here():
    assert {(r.file_type, r.name) for r in RULES} == set(BREAKING)


@pytest.mark.parametrize("file_type,rule", sorted(BREAKING), ids=lambda v: str(v))
def test_each_rule_drops_its_rows_and_counts_them_under_its_name(file_type, rule):
    kind = next(t for t in FILE_TYPES if t.name == file_type)
    key = kind.key
    bad = [{**GOOD[file_type], key: GOOD[file_type][key] + f"-bad{i}", **change}
           for i, change in enumerate(BREAKING[(file_type, rule)])]
    good = [{**GOOD[file_type], key: f"{GOOD[file_type][key]}-ok{i}"} for i in range(3)]
    cleaned = clean(read_csv(csv_bytes(kind, good + bad), kind), kind)
    expected = {r.name: 0 for r in rules_for(kind)} | {DUPLICATE_KEY: 0, rule: len(bad)}
    assert cleaned.dropped == expected
    assert cleaned.rows_read == len(good) + len(bad)
    assert sorted(cleaned.frame.get_column(key)) == sorted(r[key] for r in good)


def test_a_row_breaking_two_rules_is_counted_once_under_the_first():
    row = {**GOOD["orders"], "created_at": "never", "num_of_item": "0"}
    cleaned = clean(read_csv(csv_bytes(ORDERS, [row]), ORDERS), ORDERS)
    assert cleaned.dropped["created_at_unparsable"] == 1
    assert cleaned.dropped["num_of_item_not_positive"] == 0
    assert cleaned.rows_kept == 0


def test_strings_are_trimmed_status_lowered_and_missing_categories_unknown():
    row = {**GOOD["products"], "name": "  Slim Jeans ", "brand": " Levi's", "category": "  ",
           "department": ""}
    [product] = clean(read_csv(csv_bytes(PRODUCTS, [row]), PRODUCTS), PRODUCTS).frame.to_dicts()
    assert (product["name"], product["brand"]) == ("Slim Jeans", "Levi's")
    assert (product["category"], product["department"]) == ("Unknown", "Unknown")
    order = {**GOOD["orders"], "status": " RETURNED "}
    [staged] = clean(read_csv(csv_bytes(ORDERS, [order]), ORDERS), ORDERS).frame.to_dicts()
    assert staged["status"] == "returned"


@pytest.mark.parametrize("text,cents", [("9.99", 999), ("10", 1000), ("0.005", 1), ("1.004", 100),
                                        ("19.9899997711182", 1999), (" 2.5 ", 250),
                                        ("+3.10", 310)])
def test_money_is_exact_cents_rounded_half_up(text, cents):
    row = {**GOOD["order_items"], "sale_price": text}
    data = csv_bytes(ORDER_ITEMS, [row])
    [item] = clean(read_csv(data, ORDER_ITEMS), ORDER_ITEMS).frame.to_dicts()
    assert item["sale_price_cents"] == cents


@pytest.mark.parametrize("text,utc", [
    ("2024-01-01T10:00:00Z", datetime(2024, 1, 1, 10)),
    ("2024-01-01T23:30:00-02:00", datetime(2024, 1, 2, 1, 30)),
    ("2024-01-01 10:00:00", datetime(2024, 1, 1, 10)),  # no offset: UTC
    ("2024-01-01T10:00:00.250000+01:00", datetime(2024, 1, 1, 9, 0, 0, 250000)),
    ("2024-01-01", datetime(2024, 1, 1)),
])
def test_timestamps_are_iso_8601_and_utc_without_an_offset(text, utc):
    row = {**GOOD["orders"], "created_at": text}
    [order] = clean(read_csv(csv_bytes(ORDERS, [row]), ORDERS), ORDERS).frame.to_dicts()
    assert order["created_at"] == utc.replace(tzinfo=timezone.utc)
    assert (order["year"], order["month"]) == (utc.year, utc.month)


def test_the_last_row_of_a_duplicate_key_wins():
    rows = [{**GOOD["orders"], "status": "complete"}, {**GOOD["orders"], "status": "returned"}]
    cleaned = clean(read_csv(csv_bytes(ORDERS, rows), ORDERS), ORDERS)
    assert cleaned.dropped[DUPLICATE_KEY] == 1
    assert cleaned.frame.get_column("status").to_list() == ["returned"]


# An order row of the property below: its key (from few, so keys repeat far apart), its
# user (telling its rows apart), and whether its num_of_item breaks a rule.
_ORDER_ROWS = st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=60)


@settings(max_examples=60, deadline=None)
@given(rows=_ORDER_ROWS, batch_rows=st.integers(1, 7))
def test_the_last_kept_row_of_each_key_wins_across_every_batch_and_part(rows, batch_rows):
    file = [{**GOOD["orders"], "order_id": f"O{key}", "user_id": f"U{n}",
             "num_of_item": "0" if bad else "1"} for n, (key, bad) in enumerate(rows)]
    cleaned = clean(read_csv(csv_bytes(ORDERS, file), ORDERS), ORDERS, batch_rows=batch_rows)

    kept = [row for row in file if row["num_of_item"] == "1"]
    last = {row["order_id"]: row["user_id"] for row in kept}
    staged = [(row["order_id"], row["user_id"]) for row in kept
              if last[row["order_id"]] == row["user_id"]]  # in file order
    assert (cleaned.rows_read, cleaned.rows_kept) == (len(file), len(staged))
    assert cleaned.dropped == {r.name: 0 for r in rules_for(ORDERS)} | {
        "num_of_item_not_positive": len(file) - len(kept), DUPLICATE_KEY: len(kept) - len(staged)}
    assert list(cleaned.frame.select("order_id", "user_id").iter_rows()) == staged
    batches = list(cleaned.batches())
    # As many batches as full batches of the staged rows would make, none larger (one empty
    # batch for none), each a range of keys above the one before, so no two share a key;
    # each in file order.
    assert len(batches) == max(1, math.ceil(len(staged) / batch_rows))
    assert all(b.height <= batch_rows for b in batches)
    ranges = [(b.get_column("order_id").min(), b.get_column("order_id").max())
              for b in batches if b.height]
    assert all(high < low for (_, high), (low, _) in zip(ranges, ranges[1:]))
    assert pl.concat(batches).sort("order_id").equals(cleaned.frame.sort("order_id"))
    for batch in batches:
        assert list(batch.select("order_id", "user_id").iter_rows()) == [
            row for row in staged if row[0] in set(batch.get_column("order_id"))]


def test_polars_reads_its_csv_chunk_size_from_the_environment_when_a_scan_starts(
        tmp_path, monkeypatch):
    # cleaning.POLARS_CSV_CHUNK_BYTES bounds the streaming CSV reader's read-ahead through
    # this variable: a polars that stops reading it must fail here, by its name.
    path = tmp_path / "orders.csv"
    path.write_bytes(csv_bytes(ORDERS, [GOOD["orders"]]))
    monkeypatch.setenv("POLARS_CSV_CHUNK_SIZE", "not a size")
    with pytest.raises(BaseException, match="POLARS_CSV_CHUNK_SIZE"):
        pl.scan_csv(path).collect(engine="streaming")
    monkeypatch.setenv("POLARS_CSV_CHUNK_SIZE", str(cleaning.POLARS_CSV_CHUNK_BYTES))
    assert pl.scan_csv(path).collect(engine="streaming").height == 1


def test_extra_columns_are_ignored():
    data = csv_bytes(ORDERS, [GOOD["orders"]], extra_columns=("coupon",))
    assert read_csv(data, ORDERS).columns == list(ORDERS.columns)


@pytest.mark.parametrize("data,reason", [
    (b"\xff\xfeo\x00r\x00", "not UTF-8"),
    (b"", "empty file"),
    (b"order_id,user_id\nO1,U1\n", "missing required column(s): status, created_at"),
    (b'order_id,user_id\n"O1,U1\n', "not a CSV file"),
])
def test_files_that_cannot_be_staged_are_invalid_with_a_reason(data, reason):
    with pytest.raises(InvalidFile) as raised:
        read_csv(data, ORDERS)
    assert reason in raised.value.reasons[0]


@pytest.mark.parametrize("key,expected", [("input/products.csv", PRODUCTS),
                                          ("input/order_items_part1.csv", ORDER_ITEMS),
                                          ("input/orders_part1.csv", ORDERS),
                                          ("input/customers.csv", None)])
def test_the_file_type_comes_from_the_name_prefix(key, expected):
    assert file_type_for(key) is expected


def test_files_of_one_table_are_staged_in_upload_order_tables_side_by_side():
    from app.files.execution import FileEvent, staging_lanes
    events = [FileEvent("input/orders_fix.csv", event_time="2024-01-01T00:00:02.000Z"),
              FileEvent("input/products.csv", event_time="2024-01-01T00:00:01.000Z"),
              FileEvent("input/orders.csv", event_time="2024-01-01T00:00:01.500Z"),
              FileEvent("input/notes.txt", event_time="2024-01-01T00:00:00.000Z"),
              FileEvent("input/orders.csv", event_time="2024-01-01T00:00:03.000Z")]
    # orders.csv was uploaded again after the fix: its later upload decides its place.
    assert sorted(staging_lanes(events)) == [["input/notes.txt"],
                                             ["input/orders_fix.csv", "input/orders.csv"],
                                             ["input/products.csv"]]


def money_cents_by_groups(column: str) -> pl.Expr:
    """The first money parser (capture groups), the reference of the one in use."""
    parts = pl.col(column).str.extract_groups(cleaning._MONEY)
    fraction = (parts.struct.field("3").fill_null("") + "000").str.slice(0, 3).cast(pl.Int64)
    cents = (parts.struct.field("2").cast(pl.Int64, strict=False) * 100 + fraction // 10
             + (fraction % 10 >= 5).cast(pl.Int64))
    return pl.when(parts.struct.field("1") == "-").then(-cents).otherwise(cents)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="0123456789+-. e,", max_size=22),
                          st.decimals(allow_nan=False, allow_infinity=False).map(str),
                          st.none()), min_size=1, max_size=50))
def test_money_parses_as_the_capture_group_parser_did(texts):
    frame = pl.DataFrame({"price": texts}, schema={"price": pl.String})
    found = frame.select(cleaning.money_cents("price")).to_series().to_list()
    assert found == frame.select(money_cents_by_groups("price")).to_series().to_list()


def timestamp_utc_by_coalesce(column: str) -> pl.Expr:
    """The first timestamp parser (every format on every text), the reference of the one
    in use."""
    text = pl.col(column).str.replace(r"[Zz]$", "+00:00")
    date_only = pl.col(column).str.contains(r"^\d{4}-\d{2}-\d{2}$")
    candidates = [text.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC")
                  for f in cleaning._WITH_OFFSET]
    candidates += [text.str.to_datetime(f, strict=False, time_unit="us")
                   .dt.replace_time_zone("UTC") for f in cleaning._WITHOUT_OFFSET]
    candidates.append(pl.when(date_only).then(
        (text + "T00:00:00").str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC")))
    return pl.coalesce(candidates).alias(column)


_TIMESTAMP_PARTS = st.sampled_from(["2024-01-31", "2024-02-30", "1999-12-31", "2024-1-05", "T",
                                    " ", "  ", "t", "10:00", ":59", ":60", ":00", ".", ".250",
                                    ".123456789", "Z", "z", "+01:00", "-0230", "+24:00", "+01",
                                    "UTC", "x", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.lists(_TIMESTAMP_PARTS, max_size=6).map("".join),
                          st.datetimes(timezones=st.none() | st.timezones()).map(str),
                          st.datetimes(timezones=st.none() | st.timezones())
                          .map(lambda d: d.isoformat(timespec="minutes")),
                          st.text(alphabet="0123456789-:T .+Z", max_size=30), st.none()),
                min_size=1, max_size=50))
def test_timestamps_parse_as_every_format_tried_on_every_text_did(texts):
    frame = pl.DataFrame({"at": texts}, schema={"at": pl.String})
    found = cleaning.with_timestamps_utc(frame.lazy(), ["at"]).collect()
    assert found.equals(frame.select(timestamp_utc_by_coalesce("at")))


def test_a_larger_file_is_split_by_a_sample_of_its_keys_into_ranges_near_the_batch_size(
        monkeypatch):
    # A sample of 64 keys a part (the keys whose hash is a multiple of 7 here), not every key.
    monkeypatch.setattr(cleaning, "SAMPLE_KEYS_PER_PART", 64)
    batch_rows = 500
    file = [{**GOOD["orders"], "order_id": str(n), "user_id": f"U{n}"} for n in range(5000)]
    cleaned = clean(read_csv(csv_bytes(ORDERS, file), ORDERS), ORDERS, batch_rows=batch_rows)

    batches = list(cleaned.batches())
    keys = [b.get_column("order_id") for b in batches]
    assert pl.concat(keys).sort().equals(pl.Series("order_id", [r["order_id"] for r in file])
                                         .sort())
    assert all(high < low for high, low in zip([k.max() for k in keys],
                                               [k.min() for k in keys][1:]))
    assert len(batches) == 5000 // batch_rows
    # The parts are of about their share of the keys (a sample of 64 keys: within 40%).
    assert all(0.6 * batch_rows <= b.height <= 1.4 * batch_rows for b in batches)
