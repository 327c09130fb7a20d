"""The streaming read (a file parsed slice by slice) finds what the whole-bytes read found."""
import pytest

from app.files import cleaning
from app.files.cleaning import InvalidFile, clean, scan_csv
from app.files.contract import ORDERS, file_type_for
from app.files.sample import write_sample
from files_oracle import eager_cleaning


def test_sample_files_give_the_same_rows_and_drops_as_the_eager_read(tmp_path):
    written = write_sample(tmp_path, orders=3000, products=300, dirty_share=0.05, seed=7)
    for name in written:
        file_type = file_type_for(name)
        frame, rows_read, dropped = eager_cleaning((tmp_path / name).read_bytes(), file_type)
        streamed = clean(scan_csv(tmp_path / name, file_type), file_type)

        assert streamed.frame.equals(frame), name
        assert (streamed.rows_read, streamed.dropped) == (rows_read, dropped), name
        assert sum(dropped.values()) > 0 or name == "orders_returns.csv"


BIG_HEADER = ",".join(ORDERS.columns) + "\n"
BIG_ROW = "O{n},U1,complete,2024-01-01T10:00:00Z,,,,1\n"


def big_file(rows: int) -> bytes:
    return (BIG_HEADER + "".join(BIG_ROW.format(n=n) for n in range(rows))).encode()


@pytest.mark.parametrize("data", [
    b"\xff\xfeo\x00r\x00",
    b"",
    b" \n\t\n",
    b"order_id,user_id\nO1,U1\n",
    b'order_id,user_id\n"O1,U1\n',
    b'\xef\xbb\xbf' + big_file(3),
    # Past the first slice: a bad byte, a character cut by the slice's end, a broken quote.
    big_file(40_000) + b"O\xe9,U1,complete,2024-01-01,,,,1\n",
    big_file(40_000)[:cleaning.CHUNK_BYTES - 1] + "é".encode() + big_file(40_000)[
        cleaning.CHUNK_BYTES + 1:],
    big_file(40_000) + b'"O1,U1,complete,2024-01-01,,,,1\n',
], ids=["utf16", "empty", "blank", "missing-columns", "broken-quote", "bom", "bad-byte-late",
        "cut-character", "broken-quote-late"])
def test_files_get_the_same_rejection_or_rows_as_with_the_eager_read(tmp_path, data):
    path = tmp_path / "orders.csv"
    path.write_bytes(data)
    try:
        expected = eager_cleaning(data, ORDERS)
    except InvalidFile as exc:
        with pytest.raises(InvalidFile) as raised:
            clean(scan_csv(path, ORDERS), ORDERS)
        assert raised.value.reasons == exc.reasons
    else:
        streamed = clean(scan_csv(path, ORDERS), ORDERS)
        assert streamed.frame.equals(expected[0])
        assert (streamed.rows_read, streamed.dropped) == expected[1:]
