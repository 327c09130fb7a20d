"""The key layout of app/store/keys.py, spelled out as its docstring describes it."""
import pytest

from app.store import keys

ID = "a:b{x}"          # an id with a separator and a hash tag in it
ESCAPED = "a%3Ab%7Bx%7D"  # percent-encoded, so it spells neither


def test_each_part_keeps_its_hash_tag():
    assert keys.user_key(ID) == "user:{u:" + ESCAPED + "}"
    assert keys.user_days_key(ID) == "user-days:{u:" + ESCAPED + "}"
    assert keys.user_applied_key(ID) == "applied:{u:" + ESCAPED + "}"
    assert keys.order_key(ID) == "order:{o:" + ESCAPED + "}"
    assert keys.global_key(3) == "global:{s3}"
    assert keys.outcomes_key(3) == "pipeline:outcomes:{s3}"
    assert keys.corrections_key(3) == "corrections:{s3}"
    assert keys.shard_applied_key(3, "users") == "applied:users:{s3}"
    assert keys.product_key(ID, 2) == "product:{s2}:" + ESCAPED
    assert keys.day_key("2024-01-02", 1) == "day:{s1}:2024-01-02"
    assert keys.day_customers_key("2024-01-02", 1) == "day:{s1}:2024-01-02:customers"
    assert keys.month_key("2024-01", 1) == "month:{s1}:2024-01"
    assert keys.top_users_key("spend", shard=4) == "top:users:spend:{s4}"
    assert keys.top_users_key("orders", day="2024-01-02", shard=4) == \
        "top:users:orders:{s4}:day:2024-01-02"
    assert keys.top_users_key("spend", month="2024-01", shard=4) == \
        "top:users:spend:{s4}:month:2024-01"
    assert keys.top_products_key("units", shard=5) == "top:products:units:{s5}"
    assert keys.top_products_key("revenue", shard=5, day="2024-01-02") == \
        "top:products:revenue:{s5}:day:2024-01-02"


def test_bookkeeping_and_files_keys_share_one_tag_each():
    assert [keys.OUTCOMES_KEY, keys.REJECTED_INDEX, keys.REJECTED_BY_FIELD, keys.LAG_KEY,
            keys.rejected_key(ID), keys.rejected_order_key(ID)] == [
        "pipeline:outcomes:{p}", "rejected:{p}", "pipeline:rejected-by-field:{p}",
        "pipeline:lag:{p}", "rejected:{p}:" + ESCAPED, "rejected-order:{p}:" + ESCAPED]
    assert [keys.KPI_DATES_KEY, keys.KPI_SNAPSHOTS_KEY, keys.EXECUTIONS_KEY,
            keys.order_kpi_key("2024-01-02"), keys.category_kpi_key("2024-01-02"),
            keys.execution_key(ID), keys.execution_settled_key(ID)] == [
        "kpi:{files}:orders:dates", "kpi:{files}:snapshots", "files:{files}:executions",
        "kpi:{files}:orders:2024-01-02", "kpi:{files}:categories:2024-01-02",
        "files:{files}:execution:" + ESCAPED, "files:{files}:execution-settled:" + ESCAPED]
    assert keys.RUNNING_EXECUTIONS_KEY == "files:{files}:executions:running"
    assert [keys.KPI_WATERMARKS_KEY, keys.APPLIED_UPLOADS_KEY, keys.execution_plan_key(ID),
            keys.execution_steps_key(ID), keys.execution_attempts_key(ID),
            keys.upload_lock_key(ID)] == [
        "kpi:{files}:watermarks", "files:{files}:applied-uploads",
        "files:{files}:execution-plan:" + ESCAPED, "files:{files}:execution-steps:" + ESCAPED,
        "files:{files}:execution-attempts:" + ESCAPED, "files:{files}:upload-lock:" + ESCAPED]
    assert {keys.hash_tag(key) for key in (keys.OUTCOMES_KEY, keys.rejected_key(ID))} == {"{p}"}


def test_a_key_template_takes_exactly_its_slots():
    assert keys.product_key.template == "product:{s<shard>}:<id>"
    with pytest.raises(TypeError):
        keys.product_key(ID)
