"""The files bench's larger files: the sample's rows copied with fresh keys, nothing else."""
import polars as pl

from app.files.cleaning import DUPLICATE_KEY, clean, scan_csv
from app.files.contract import file_type_for
from bench.files_pipeline import UPLOADED, enlarge, generate


def test_larger_files_repeat_every_row_with_new_keys_and_clean_alike(tmp_path):
    written = generate(tmp_path / "x1", 3000)
    larger = enlarge(tmp_path / "x1", tmp_path / "x3", 3)

    for name in UPLOADED:
        file_type = file_type_for(name)
        once = clean(scan_csv(tmp_path / "x1" / name, file_type), file_type)
        thrice = clean(scan_csv(tmp_path / "x3" / name, file_type), file_type)
        if name == "products.csv":
            assert larger[name] == written[name]
            assert thrice.frame.equals(once.frame)
            continue
        assert larger[name] == thrice.rows_read == 3 * written[name]
        # Each copy drops what the sample drops; its keys collide with no other copy's.
        assert thrice.dropped == {rule: 3 * n for rule, n in once.dropped.items()}
        assert thrice.frame.height == 3 * once.frame.height
        assert once.dropped[DUPLICATE_KEY] > 0 or name != "orders_part1.csv"
        keys = thrice.frame.get_column(file_type.key)
        assert keys.n_unique() == keys.len()
        copy = thrice.frame.filter(pl.col(file_type.key).str.starts_with("1-"))
        assert copy.get_column("created_at").equals(once.frame.get_column("created_at"))
