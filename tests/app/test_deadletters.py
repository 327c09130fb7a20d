"""Dead letters as the CLI sees them: ids, task envelopes, retry resets, any body at all."""
import base64
import json

from hypothesis import given, strategies as st

from app.deadletters import (ORIGINAL_ID_ATTRIBUTE, _dead_letter, decode_task_envelope,
                             original_id, reset_retries)


def sqs_message(body: str, message_id="m-1", original=None, **attributes) -> dict:
    message = {"MessageId": message_id, "ReceiptHandle": "r-1", "Body": body,
               "Attributes": attributes}
    if original:
        message["MessageAttributes"] = {ORIGINAL_ID_ATTRIBUTE: {"DataType": "String",
                                                                "StringValue": original}}
    return message


def envelope(task_id="t-1", retries=4) -> dict:
    return {"body": "W10=", "headers": {"task": "orders.process", "id": task_id,
                                        "retries": retries}, "properties": {}}


def test_a_redriven_message_keeps_its_first_id():
    assert original_id(sqs_message("{}", "m-2", original="m-1")) == "m-1"
    assert original_id(sqs_message("{}", "m-2")) == "m-2"


def test_a_task_envelope_is_found_plain_or_base64_and_its_retries_reset():
    plain = json.dumps(envelope())
    encoded = base64.b64encode(plain.encode()).decode()
    for body in (plain, encoded):
        assert decode_task_envelope(body)["headers"]["id"] == "t-1"
        again = json.loads(base64.b64decode(reset_retries(body)))
        assert again["headers"] == {"task": "orders.process", "id": "t-1", "retries": 0}


def test_a_plain_order_body_is_sent_again_unchanged():
    body = json.dumps({"order_id": "O1", "headers": {"note": "not a task"}})
    assert decode_task_envelope(body) is None
    assert reset_retries(body) == body


def test_a_dead_letter_names_its_task_or_its_message():
    letter = _dead_letter(sqs_message(json.dumps(envelope("t-9", 5)), ApproximateReceiveCount="6",
                                      SentTimestamp="1733000000000"))
    assert (letter.task_id, letter.retries, letter.receive_count) == ("t-9", 5, 6)
    assert letter.matches({"t-9"}) and letter.matches({"m-1"}) and not letter.matches({"x"})
    raw = _dead_letter(sqs_message('{"order_id": "O1"}', "m-3", original="m-0"))
    assert (raw.task_id, raw.retries) == ("m-0", None)
    assert raw.summary()["sent_at"] is None


# Whatever reached the DLQ (a failed delivery keeps its body), listing and redriving it must
# work: headers that are a string, a list or null are not a task envelope.
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=12)
task_headers = st.fixed_dictionaries({"task": st.text(max_size=8)},
                                     optional={"id": json_values, "retries": json_values})
envelope_like = st.fixed_dictionaries({"headers": json_values | task_headers,
                                       "body": json_values}, optional={"properties": json_values})


@given(st.one_of(st.text(max_size=200), envelope_like.map(json.dumps),
                 envelope_like.map(lambda e: base64.b64encode(json.dumps(e).encode()).decode())))
def test_any_body_in_the_dlq_can_be_listed_and_sent_again(body):
    letter = _dead_letter(sqs_message(body))
    json.dumps(letter.summary())
    assert letter.matches({"m-1"})
    again = reset_retries(body)
    if decode_task_envelope(body) is None:
        assert again == body
    else:
        assert json.loads(base64.b64decode(again))["headers"]["retries"] == 0
