"""Settings of the files path: names that cannot collide, endpoints that follow SQS's."""
import pytest

from app.settings import Settings, from_env


@pytest.mark.parametrize("queue", ["orders-queue", "orders-queue-dlq", "OrderQueue"])
def test_the_files_queue_cannot_be_an_orders_queue_or_a_dlq(queue):
    with pytest.raises(ValueError, match="FILES_QUEUE"):
        Settings(files_queue=queue, extra_orders_queues="OrderQueue")


@pytest.mark.parametrize("seconds", ["59", "43201"])
def test_the_execution_timeout_is_a_valid_sqs_visibility_timeout(seconds):
    with pytest.raises(ValueError, match="FILES_EXECUTION_TIMEOUT"):
        from_env({"FILES_EXECUTION_TIMEOUT": seconds})


def test_the_batch_window_must_end_before_the_execution_timeout():
    with pytest.raises(ValueError, match="FILES_BATCH_WINDOW"):
        from_env({"FILES_BATCH_WINDOW": "900", "FILES_EXECUTION_TIMEOUT": "900"})


def test_s3_and_sns_follow_the_sqs_endpoint_unless_told_otherwise():
    local, other = "http://127.0.0.1:4599", "http://s3.local:9000"
    assert Settings(sqs_endpoint_url=local).files_endpoint == local
    assert Settings(sqs_endpoint_url=local, files_endpoint_url=other).files_endpoint == other
    assert Settings().files_dlq == "file-processing-queue-dlq"
    aws = from_env({"SQS_ENDPOINT_URL": "", "ORDERS_QUEUE_URL": "https://q/1/orders-queue",
                    "FILES_QUEUE_URL": "https://q/1/file-processing-queue"})
    assert (aws.files_endpoint, aws.files_url) == ("", "https://q/1/file-processing-queue")


@pytest.mark.parametrize("hours, timeout", [("1", "3600"), ("2", "43200")])
def test_the_vacuum_retention_must_outlast_the_longest_execution(hours, timeout):
    with pytest.raises(ValueError, match=f"FILES_VACUUM_RETENTION_HOURS \\({hours} h\\) must be "
                                         f"longer than FILES_EXECUTION_TIMEOUT \\({timeout} s\\)"):
        from_env({"FILES_VACUUM_RETENTION_HOURS": hours, "FILES_EXECUTION_TIMEOUT": timeout})
    assert from_env({"FILES_VACUUM_RETENTION_HOURS": "1", "FILES_EXECUTION_TIMEOUT": "3599"})


@pytest.mark.parametrize("variable", ["FILES_MAINTAIN_INTERVAL", "FILES_SWEEP_INTERVAL",
                                      "FILES_EXECUTION_RECORD_DAYS"])
def test_the_upkeep_intervals_and_the_record_days_are_positive(variable):
    with pytest.raises(ValueError, match=variable):
        from_env({variable: "0"})
