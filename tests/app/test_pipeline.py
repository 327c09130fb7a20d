"""pipeline.process: every message of a batch gets one outcome, in order, in one Redis call."""
from app import pipeline
from app.orders import Incoming
from app.settings import Settings
from conftest import order_body


def test_each_message_gets_its_outcome_in_the_order_sent(store):
    store.apply([])  # an empty batch writes nothing and fails nothing
    first = pipeline.process([Incoming(order_body("A"), "m-a")], store, Settings())
    assert [o.status for o in first] == ["counted"]
    batch = [Incoming("[]", "m-1"), Incoming(order_body("B"), "m-2"),
             Incoming(order_body("A"), "m-3"), Incoming(order_body("A", user_id="U2"), "m-4")]
    outcomes = pipeline.process(batch, store, Settings())
    assert [(o.message_id, o.order_id, o.status) for o in outcomes] == [
        ("m-1", None, "rejected"), ("m-2", "B", "counted"), ("m-3", "A", "duplicate"),
        ("m-4", "A", "conflict")]
    assert outcomes[0].reasons == {"_schema": ["Body must be a JSON object, not an array."]}
    assert store.global_stats().total_orders == 2


def test_an_outcome_as_a_task_result_leaves_out_what_it_lacks():
    assert pipeline.Outcome("m-1", None, "rejected", {"_schema": ["x"]}).as_dict() == {
        "message_id": "m-1", "status": "rejected", "reasons": {"_schema": ["x"]}}
    assert pipeline.Outcome("m-2", "O2", "counted").as_dict() == {
        "message_id": "m-2", "order_id": "O2", "status": "counted"}
