"""The seed-style API peer: FastAPI on uvicorn, one Redis HGETALL per request.

Written the way the public examples serve the same two endpoints, as the peer the API
benchmark compares the project's gunicorn + Flask setup with. It reads whichever user
layout it finds (the seeds' float total_spend or the project's total_spend_cents) under
the project's key names (hash-tagged; the global totals summed over REDIS_SHARDS shards),
so it serves the data the project's worker wrote in the same run.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.fastapi_peer:app --port 8001
"""
import os

import redis.asyncio as redis
from fastapi import FastAPI, HTTPException

from app.settings import from_env
from app.store import global_key, user_key

app = FastAPI(title="seed-style order stats")
SETTINGS = from_env()
SHARDS = SETTINGS.redis_shards
# The pool as large as the project API's (API_WORKER_CONNECTIONS): redis-py's default of
# 100 answered most requests at 256 connections with "Too many connections".
r = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                         decode_responses=True, max_connections=SETTINGS.api_worker_connections)


def money(data: dict, name: str) -> float:
    """A float amount from either layout: <name> in units, or <name>_cents."""
    if name in data:
        return round(float(data[name]), 2)
    return int(data.get(f"{name}_cents", 0)) / 100


@app.get("/users/{user_id}/stats")
async def user_stats(user_id: str):
    """One user's order count and spend."""
    data = await r.hgetall(user_key(user_id))
    if not data:
        raise HTTPException(status_code=404, detail="User not found")
    return {"user_id": user_id, "order_count": int(data.get("order_count", 0)),
            "total_spend": money(data, "total_spend")}


@app.get("/stats/global")
async def global_stats():
    """The platform's order count and revenue."""
    async with r.pipeline(transaction=False) as pipe:
        for shard in range(SHARDS):
            pipe.hgetall(global_key(shard))
        shares = await pipe.execute()
    return {"total_orders": sum(int(data.get("total_orders", 0)) for data in shares),
            "total_revenue": round(sum(money(data, "total_revenue") for data in shares), 2)}
