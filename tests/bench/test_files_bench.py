"""The files bench's larger files: the sample's rows copied with fresh keys, nothing else."""
import polars as pl

from app.files.cleaning import DUPLICATE_KEY, clean, scan_csv
from app.files.contract import file_type_for
from bench.files_pipeline import (TARGET_COUNTED_SHARE, TARGET_P99_SECONDS, UPLOADED, enlarge,
                                  files_targets, generate, orders_window)


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


def test_orders_meanwhile_are_those_sent_in_the_window_and_counted_before_its_end():
    # 200 orders sent 0.1 s apart from t=0; order k is counted k/1000 s after its send, but
    # the last ten never are.
    sent = {f"o{k}": k / 10 for k in range(200)}
    counted = {f"o{k}": k / 10 + k / 1000 for k in range(190)}

    window = orders_window(sent, counted, start=5.0, end=15.0)

    in_window = range(50, 150)  # sent at 5.0 .. 14.9
    assert window["sent"] == len(in_window)
    assert window["counted_meanwhile"] == sum(k / 10 + k / 1000 < 15.0 for k in in_window)
    latencies = sorted(k / 1000 for k in in_window)
    assert window["p50_s"] == round(latencies[50], 3)
    assert window["p99_s"] == round(latencies[99], 3) == window["max_s"]
    late = orders_window(sent, counted, start=15.0, end=20.0)
    assert (late["sent"], late["counted_ever"]) == (50, 40)
    assert orders_window(sent, counted, 30.0, 31.0)["p99_s"] is None


def test_orders_targets_hold_the_share_counted_meanwhile_and_the_p99():
    def size(counted: int, p99: float) -> dict:
        orders = {"per_s": 20, "idle": {"p99_s": 0.05},
                  "files": {"sent": 1000, "counted_meanwhile": counted, "p99_s": p99}}
        return {"pipeline": {"rows": 10, "orders": orders}, "pipeline_vs_floor": 1.0,
                "process_peak_vs_floor": 1.0, "worker_peak_vs_floor": 1.0}

    share = int(TARGET_COUNTED_SHARE * 1000)
    for counted, p99, met in [(share, TARGET_P99_SECONDS, [True, True]),
                              (share - 1, TARGET_P99_SECONDS, [False, True]),
                              (1000, TARGET_P99_SECONDS + 0.001, [True, False])]:
        found = files_targets({"sizes": [size(counted, p99)]})
        assert [m for target, _, m in found if target.startswith("orders")] == met
