"""app.aws on LocalStack's S3 and SNS: moves, JSON objects, notifications, the bucket's setup."""
import json
import uuid
from datetime import date

import pytest

from app import aws, sqs
from app.settings import Settings


def test_a_move_copies_then_deletes_and_a_second_move_finds_nothing(files_settings):
    s3, bucket = aws.s3_client(files_settings), files_settings.files_bucket
    source, target = f"{aws.INPUT}orders.csv", f"{aws.ARCHIVE}orders.csv"
    content = "order_id,user_id\nO1,Zoë\n".encode()
    s3.put_object(Bucket=bucket, Key=source, Body=content)

    assert aws.move(s3, bucket, source, target) is True
    assert aws.get_bytes(s3, bucket, source) is None
    assert aws.get_bytes(s3, bucket, target) == content
    assert aws.move(s3, bucket, source, target) is False


def test_json_documents_are_written_as_utf8_with_dates_as_text(files_settings):
    s3, bucket = aws.s3_client(files_settings), files_settings.files_bucket
    document = {"user": "Zoë 東京", "day": date(2024, 12, 1), "rows": [1, 2]}
    aws.put_json(s3, bucket, f"{aws.RESULTS}r.json", document)
    stored = aws.get_bytes(s3, bucket, f"{aws.RESULTS}r.json")
    assert json.loads(stored.decode("utf-8")) == {**document, "day": "2024-12-01"}
    assert "Zoë 東京".encode() in stored


def test_a_published_message_reaches_a_subscribed_queue(files_settings):
    sns, sqs_client = aws.sns_client(files_settings), sqs.client(files_settings)
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    url = sqs_client.create_queue(QueueName=f"sub-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs_client.get_queue_attributes(QueueUrl=url,
                                          AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert aws.topic_arn(sns, topic) == aws.topic_arn(sns, topic)
    sns.subscribe(TopicArn=aws.topic_arn(sns, topic), Protocol="sqs", Endpoint=arn)

    message = {"execution": "e-1", "day": date(2024, 12, 1)}
    message_id = aws.publish(sns, topic, "S" * 150, message)

    [received] = sqs_client.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    envelope = json.loads(received["Body"])
    assert envelope["MessageId"] == message_id
    assert envelope["Subject"] == "S" * 100  # SNS takes at most 100 characters
    assert json.loads(envelope["Message"]) == {**message, "day": "2024-12-01"}


def test_setting_the_bucket_up_again_keeps_one_notification_to_the_queue(files_settings):
    made = aws.ensure_files_resources(files_settings)
    assert aws.ensure_files_resources(files_settings) == made
    s3 = aws.s3_client(files_settings)
    configured = s3.get_bucket_notification_configuration(Bucket=files_settings.files_bucket)
    [notification] = configured["QueueConfigurations"]
    assert notification["Events"] == ["s3:ObjectCreated:*"]
    rules = notification["Filter"]["Key"]["FilterRules"]
    assert [(rule["Name"].lower(), rule["Value"]) for rule in rules] == [("prefix", aws.INPUT)]


def test_delta_storage_options_name_the_local_endpoint_only_when_there_is_one(files_settings):
    local = aws.delta_storage_options(files_settings)
    assert local["AWS_ENDPOINT_URL"] == files_settings.files_endpoint
    assert local["AWS_ALLOW_HTTP"] == str(files_settings.files_endpoint.startswith("http:")).lower()
    real = Settings(sqs_endpoint_url="", aws_region="eu-west-1",
                    orders_queue_url="https://sqs.eu-west-1.amazonaws.com/1/orders")
    assert aws.delta_storage_options(real) == {"AWS_REGION": "eu-west-1", "conditional_put": "etag"}


def test_an_object_is_streamed_in_slices_at_the_version_asked(files_settings, tmp_path):
    s3, bucket, key = aws.s3_client(files_settings), files_settings.files_bucket, "input/big.csv"
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = bytes(range(256)) * (3 * aws.CHUNK_BYTES // 256 + 7)  # more than three slices
    version = s3.put_object(Bucket=bucket, Key=key, Body=first)["VersionId"]
    s3.put_object(Bucket=bucket, Key=key, Body=b"second")

    with open(tmp_path / "latest", "wb") as latest, open(tmp_path / "first", "wb") as pinned:
        assert aws.download(s3, bucket, key, latest) == len(b"second")
        assert aws.download(s3, bucket, key, pinned, version_id=version) == len(first)
    assert (tmp_path / "latest").read_bytes() == b"second"
    assert (tmp_path / "first").read_bytes() == first
    with open(tmp_path / "none", "wb") as none:
        assert aws.download(s3, bucket, "input/nothing.csv", none) is None


def test_an_object_above_the_limit_is_refused_before_any_byte_is_written(files_settings,
                                                                          tmp_path):
    s3, bucket = aws.s3_client(files_settings), files_settings.files_bucket
    s3.put_object(Bucket=bucket, Key="input/orders.csv", Body=b"x" * 101)
    with open(tmp_path / "out", "wb") as out:
        assert aws.download(s3, bucket, "input/orders.csv", out, max_bytes=101) == 101
    with open(tmp_path / "out", "wb") as out, pytest.raises(aws.ObjectTooLarge) as raised:
        aws.download(s3, bucket, "input/orders.csv", out, max_bytes=100)
    assert (tmp_path / "out").read_bytes() == b""
    assert str(raised.value) == "too large: 101 bytes, above FILES_MAX_BYTES (100)"
