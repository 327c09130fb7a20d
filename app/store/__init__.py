"""The Redis gateway: the aggregates (Store) and the batch files' records (FilesStore).

keys.py names every key; scripts/ holds the Lua, one script per file, each with a header
naming its KEYS, ARGV and reply, and lua.py loads them; writes.py is the exactly-once
protocol, aggregates.py the reads, batch_files.py the files path. The names below are the
package's interface.
"""
from app.store.aggregates import (KPI_FIELDS, OUTCOMES, PlatformTotals, Store, UserRecord,
                                  UserTotals)
from app.store.batch_files import ORDER_KPI_FIELDS, FilesStore
from app.store.keys import (BOOKKEEPING_TAG, EXECUTIONS_KEY, KPI_DATES_KEY, KPI_SNAPSHOTS_KEY,
                            LAG_KEY, OUTCOMES_KEY, REJECTED_BY_FIELD, REJECTED_INDEX,
                            RUNNING_EXECUTIONS_KEY, TASK_EVENTS_KEY, applied_mark, category_kpi_key, corrections_key,
                            day_customers_key, day_key, escaped_id, execution_key,
                            execution_settled_key, global_key, hash_tag, month_key, order_key,
                            order_kpi_key, outcomes_key, product_key, rejected_key,
                            rejected_order_key, shard_applied_key, shard_of, shard_tag,
                            top_products_key, top_users_key, user_applied_key, user_days_key,
                            user_key)
from app.store.lua import source as _lua_source
from app.store.operations import KEPT_BODY_BYTES, MAX_TOTAL, kept_body
from app.store.writes import (WAIT_TIMEOUT_MS, Contended, NotReplicated, PartlyApplied,
                              TopologyChanged, Writer)

# The one-set ranking script's text (scripts/ranked.lua), for a benchmark that runs it
# inside another script.
RANKED = _lua_source("ranked")

__all__ = [
    "BOOKKEEPING_TAG", "EXECUTIONS_KEY", "KEPT_BODY_BYTES", "KPI_DATES_KEY", "KPI_FIELDS",
    "KPI_SNAPSHOTS_KEY", "LAG_KEY", "MAX_TOTAL", "ORDER_KPI_FIELDS", "OUTCOMES",
    "OUTCOMES_KEY", "RANKED", "REJECTED_BY_FIELD", "REJECTED_INDEX", "RUNNING_EXECUTIONS_KEY",
    "TASK_EVENTS_KEY",
    "WAIT_TIMEOUT_MS", "Contended", "FilesStore", "NotReplicated", "PartlyApplied",
    "PlatformTotals", "Store", "TopologyChanged", "UserRecord", "UserTotals", "Writer",
    "applied_mark", "category_kpi_key", "corrections_key", "day_customers_key", "day_key",
    "escaped_id", "execution_key", "execution_settled_key", "global_key", "hash_tag",
    "kept_body", "month_key", "order_key", "order_kpi_key", "outcomes_key", "product_key",
    "rejected_key", "rejected_order_key", "shard_applied_key", "shard_of", "shard_tag",
    "top_products_key", "top_users_key", "user_applied_key", "user_days_key", "user_key",
]
