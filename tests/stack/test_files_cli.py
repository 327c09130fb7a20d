"""orders-files sample/upload and `celery -A tasks files list|show|sweep|maintain`."""
import json
from dataclasses import replace

from click.testing import CliRunner

from app import aws
from app.files.cleaning import DUPLICATE_KEY, clean, read_csv, rules_for
from app.files.contract import file_type_for
from app.files.execution import Files
from app.settings import to_env
from app.store import FilesStore
from conftest import celery_cli, free_port, merge_sample_orders, stuck_execution
from stack.batch_files import main


def test_sample_files_have_dirty_rows_of_every_kind_and_later_returns(tmp_path):
    result = CliRunner().invoke(main, ["sample", "--out", str(tmp_path), "--orders", "3000",
                                       "--dirty-share", "0.05"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["order_items_part1.csv", "order_items_returns.csv", "orders_part1.csv",
                     "orders_returns.csv", "products.csv"]
    for name in ("products.csv", "orders_part1.csv", "order_items_part1.csv"):
        file_type = file_type_for(name)
        cleaned = clean(read_csv((tmp_path / name).read_bytes(), file_type), file_type)
        for rule in rules_for(file_type):
            if rule.name != "missing_key":  # exports always carry their keys
                assert cleaned.dropped[rule.name] > 0, (name, rule.name)
        if file_type.name == "orders":
            assert cleaned.dropped[DUPLICATE_KEY] > 0
            assert cleaned.frame.get_column("user_id").n_unique() > 100
    returns = clean(read_csv((tmp_path / "orders_returns.csv").read_bytes(),
                             file_type_for("orders_returns.csv")), file_type_for("orders"))
    assert set(returns.frame.get_column("status")) == {"returned"}


def test_upload_puts_files_under_input(files_settings, tmp_path, monkeypatch):
    for name, value in to_env(files_settings).items():
        monkeypatch.setenv(name, value)
    paths = []
    for name in ("orders_a.csv", "products_b.csv"):
        (tmp_path / name).write_text("x\n1\n")
        paths.append(str(tmp_path / name))
    result = CliRunner().invoke(main, ["upload", *paths])
    assert result.exit_code == 0, result.output
    listed = aws.s3_client(files_settings).list_objects_v2(Bucket=files_settings.files_bucket,
                                                           Prefix="input/")
    assert {o["Key"] for o in listed["Contents"]} == {"input/orders_a.csv", "input/products_b.csv"}


def test_celery_files_list_and_show(settings):
    record = {"execution_id": "20240101T000000Z-abc", "status": "succeeded",
              "started_at": "2024-01-01T00:00:00+00:00", "started_at_ms": 1,
              "files": [{"key": "input/orders.csv"}], "rows_kept": 7, "dates": ["2024-01-01"]}
    FilesStore.from_url(settings.redis_url).save_execution(record)
    # Through the celery CLI, as an operator runs it: the commands read the app's settings.
    listed = celery_cli(settings, "files", "list", "--json")
    assert [r["execution_id"] for r in json.loads(listed.stdout)] == [record["execution_id"]]
    assert record["execution_id"] in celery_cli(settings, "files", "list").stdout  # the table
    shown = celery_cli(settings, "files", "show", record["execution_id"], "--json")
    assert json.loads(shown.stdout) == record
    missing = celery_cli(settings, "files", "show", "nope", check=False)
    assert missing.returncode == 1 and "No execution 'nope'" in missing.stderr


def test_celery_files_sweep_and_maintain(files_settings):
    settings = replace(files_settings, files_execution_timeout=60)
    files = Files(settings)
    merge_sample_orders(files, seed=7)
    stuck = stuck_execution(files, seconds=61)

    assert json.loads(celery_cli(settings, "files", "sweep", "--json").stdout) == [stuck]
    assert files.store.execution(stuck)["status"] == "failed"
    assert "Failed 0 execution(s)" in celery_cli(settings, "files", "sweep").stdout
    [report] = json.loads(celery_cli(settings, "files", "maintain", "--json").stdout)
    assert (report["table"], report["files_before"], report["files"]) == ("orders", 1, 1)
    # As the task does: the change data upkeep too, bounded by the KPI watermarks.
    assert report["change_data_removed"] == 0 and "change_data_needed_from" in report
    assert aws.get_bytes(files.s3, settings.files_bucket,
                         "staging/orders/_delta_log/_last_checkpoint") is not None
    assert "orders" in celery_cli(settings, "files", "maintain").stdout  # the table


def test_maintain_names_an_s3_that_does_not_answer_on_one_line(settings):
    port = free_port()  # nothing listens there
    ran = celery_cli(replace(settings, files_endpoint_url=f"http://127.0.0.1:{port}"),
                     "files", "maintain", check=False)
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr and "\x1b" not in ran.stderr
    assert len(ran.stderr.splitlines()) == 1
    assert ran.stderr.startswith("Error: Delta tables at ")
    assert f"127.0.0.1:{port}" in ran.stderr
