"""celery beat sends files.sweep and files.maintain; a real worker runs them."""
from dataclasses import replace

from app import aws
from app.files.contract import ORDERS
from app.files.execution import Files
from conftest import ROOT, Notifications, merge_sample_orders, stuck_execution, wait_for
from stack.launch import beat_command, environment
from stack.services import Process
from tasks.celery import create_celery
from tasks.names import FILES_MAINTAIN, FILES_SWEEP, FILES_TASKS


def test_the_schedule_sends_the_upkeep_tasks_at_the_settings_intervals(settings):
    app = create_celery(replace(settings, files_sweep_interval=7, files_maintain_interval=11))
    schedule = app.conf.beat_schedule
    assert {entry["task"]: entry["schedule"] for entry in schedule.values()} == {
        FILES_SWEEP: 7, FILES_MAINTAIN: 11}
    # The files queue's receiver runs only the files tasks it knows.
    assert {FILES_SWEEP, FILES_MAINTAIN} <= set(FILES_TASKS)
    # Without the files path there is nothing to schedule.
    assert create_celery(replace(settings, files_enabled=False)).conf.beat_schedule == {}


def test_beat_sends_the_sweep_and_the_maintenance_and_a_worker_runs_them(files_settings,
                                                                        start_worker, tmp_path):
    settings = replace(files_settings, files_execution_timeout=60, files_sweep_interval=2,
                       files_maintain_interval=3)
    files = Files(settings)
    notes = Notifications(settings)
    merge_sample_orders(files, seed=3)  # a table to maintain
    # An execution whose step was lost 61 s ago: nothing but the sweeper ends it.
    stuck = stuck_execution(files, seconds=61)
    start_worker(settings=settings)
    beat = Process("beat", beat_command(tmp_path / "celerybeat-schedule"),
                   env=environment(settings), log_dir=tmp_path, cwd=ROOT).start()
    try:
        [(topic, message)] = notes.wait(1, timeout=90)
        assert (topic, message["execution_id"]) == (settings.files_failure_topic, stuck)
        assert files.store.execution(stuck)["failure"]["task"] == FILES_SWEEP
        checkpoint = f"{aws.STAGING}{ORDERS.table}/_delta_log/_last_checkpoint"
        wait_for(lambda: aws.get_bytes(files.s3, settings.files_bucket, checkpoint), timeout=90,
                 message="files.maintain to checkpoint the orders table")
        assert beat.running, beat.log_tail()
    finally:
        beat.stop()
    assert f"Sending due task {FILES_SWEEP}" in beat.log_tail(200)
