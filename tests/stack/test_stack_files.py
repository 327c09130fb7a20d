"""make run's files path: resources created, sample files uploaded, KPIs served."""
import pytest
import requests

from conftest import wait_for


@pytest.mark.slow
def test_orders_stack_run_uploads_sample_files_and_serves_their_kpis(orders_stack):
    run = orders_stack(DEMO_FILE_ORDERS="200", FILES_BATCH_WINDOW="2")

    def executions():
        run.assert_running()
        try:
            return [e for e in requests.get(f"{run.api}/files/executions", timeout=5).json()
                    if e["status"] != "running"]
        except requests.RequestException:
            return []

    samples = ["order_items_part1.csv", "orders_part1.csv", "products.csv"]

    def staged():
        # The uploads may span more than one FILES_BATCH_WINDOW: one execution or several.
        done = executions()
        return done if sorted(f for e in done for f in e["valid_files"]) == samples else None

    done = wait_for(staged, timeout=180, message="the sample files' executions")
    assert all(e["status"] == "succeeded" for e in done), done
    kpis = requests.get(f"{run.api}/kpis/orders", params={"from": "2024-01-01",
                                                          "to": "2024-12-31"}).json()
    assert [k["order_date"] for k in kpis] == sorted({d for e in done for d in e["dates"]})
    assert sum(k["total_orders"] for k in kpis) == next(
        f["rows_kept"] for e in done for f in e["files"] if f["name"] == "orders_part1.csv")
    assert "orders-files upload" in run.text()  # how to try the returns


@pytest.mark.slow
def test_orders_stack_run_without_the_files_path_starts_only_the_orders_worker(orders_stack,
                                                                              tmp_path):
    run = orders_stack(FILES_ENABLED="false")
    wait_for(lambda: run.assert_running() or "running; Ctrl-C" in run.text(), timeout=120,
             message="the stack running")
    text = run.text()
    [started] = [line for line in text.splitlines() if "starting worker:" in line]
    assert started.endswith("-n worker1@%h -Q orders-queue,OrderQueue"), started
    assert "starting files-worker" not in text and "creating bucket" not in text
    assert not (tmp_path / "var" / "log" / "files-worker.log").exists()
    # Nor beat: its schedule is the files path's upkeep.
    assert "starting beat" not in text and not (tmp_path / "var" / "log" / "beat.log").exists()
