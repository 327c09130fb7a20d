"""make bench: every contender on the same servers, one after the other, in one run.

Starts LocalStack's SQS, a counting proxy in front of it (bench/sqs_counter.py), a
redis-server for the aggregates and one for the project's control plane, all on free
ports; then, each on a fresh queue and a flushed Redis:

1. ingest of the same pre-queued orders by the raw SQS drain (direct and through the
   proxy), the seed-style worker, stock and tuned Celery, the bare batched loop and the
   project's worker as shipped, counting SQS requests (at the proxy), Redis round trips
   (INFO stats), commands and CPU per order; then again with the proxy adding each round
   trip of --rtts, and the project with 1, 2 and 4 worker processes at the largest;
2. wrk against the project's gunicorn API and the seed-style FastAPI peer;
3. the project's ingest at several user counts, with Redis memory per user;
4. the batch files path on about --files-items order_items rows, then --files-larger times
   as many, against a bare polars streaming script (bench/files_pipeline.py);
5. top users over 3 months and a year at --range-orders-per-day orders a day, merged page
   by page against the ZUNIONSTORE script, on its own redis-server (bench/range_queries.py),
   with the users spread over the shards as the store places them and all in one shard.

From the same figures: the cost per order at 1, 2 and 4 worker processes, and a capacity
and cost table (SQS requests and their cost at --sqs-price-per-million, worker cores and
Redis shards for 1,000 and 10,000 orders/s).

--parts (BENCH_PARTS) runs some of these only: ingest (1 to 3 and the Redis durability and
Cluster rows, which share the generated orders), files (4), range (5).

Prints one Markdown table and writes it with the raw figures to --out (latest.md, latest.json).
The servers and the ingest run are bench/harness.py; the contenders bench/contenders.py;
the API rows bench/api_load.py; the table bench/report.py.

    python -m bench.run [--orders 20000] [--rtts 0,10,25] [--api-seconds 20]
                        [--scale-users 2000,20000,100000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench import files_pipeline, range_queries, report
from bench.api_load import run_api_phase, start_gunicorn
from bench.contenders import (baseline_tree, run_bare_loop, run_baseline, run_cluster,
                              run_drain, run_durability, run_project, run_rounds, run_scale,
                              run_seed, run_stock_celery, warm_up)
from bench.harness import MAX_SECONDS, Orders, fixed_members, start_stack
from stack.services import PROJECT_ROOT


PARTS = ("ingest", "files", "range")
# Amazon SQS standard queues' list price in us-east-1 after the free tier (the first million
# requests a month), up to 100 billion requests a month, and when it was read.
SQS_PRICE_PER_MILLION, SQS_PRICE_DATE = 0.40, "2026-12-06"


# Every option of python -m bench.run: (option, type, default, the BENCH_* variable that
# overrides the default or None, help), so make bench BENCH_ORDERS=... sets --orders.
OPTIONS = (
    ("--orders", int, 20_000, "BENCH_ORDERS", "orders pre-queued for each ingest contender"),
    ("--users", int, 20_000, "BENCH_USERS", "users the orders are spread over"),
    ("--products", int, 2_000, "BENCH_PRODUCTS", "products the orders are spread over"),
    ("--rtts", str, "0,10,25", "BENCH_RTTS", "comma-separated round trips (ms) the proxy adds "
     "to every SQS request, one set of ingest rows each"),
    ("--worker-processes", str, "1,2,4", "BENCH_WORKER_PROCESSES", "worker processes (-c 2 "
     "each) of the project's rows at the largest round trip"),
    ("--rounds", int, 3, "BENCH_ROUNDS", "interleaved rounds of the round-trip ratio rows (raw "
     "drain and project at 0 ms, project at the largest round trip with each number of worker "
     "processes); 0 for none"),
    ("--api-seconds", int, 20, "BENCH_API_SECONDS", "wrk run per server, endpoint and number "
     "of connections, 0 for none"),
    ("--api-connections", str, "32,256", "BENCH_API_CONNECTIONS", "comma-separated wrk "
     "connections, one set of API rows each"),
    ("--api-only", int, 0, "BENCH_API_ONLY", "1: only the project's ingest at 0 ms (the data "
     "the API reads) and the API rows"),
    ("--scale-users", str, "2000,20000,100000", "BENCH_SCALE_USERS",
     "comma-separated user counts of the scale rows"),
    ("--scale-orders", int, 0, "BENCH_SCALE_ORDERS", "orders per scale row; 0: --orders"),
    ("--max-seconds", float, MAX_SECONDS, "BENCH_MAX_SECONDS",
     "time box of one ingest contender"),
    ("--files-items", int, 1_000_000, "BENCH_FILES_ITEMS",
     "order_items rows of the files row; 0 skips it"),
    ("--files-larger", int, 10, "BENCH_FILES_LARGER", "a second files row on this many times "
     "as many rows (ten: a 1 GB order_items file, some minutes); 0 or 1 for none"),
    ("--range-orders-per-day", int, 10_000, "BENCH_RANGE_ORDERS_PER_DAY",
     "orders a day of the range rankings' data; 0 skips them"),
    ("--range-days", int, 366, "BENCH_RANGE_DAYS", "days of the range rankings' data"),
    ("--range-users", int, 1_000_000, "BENCH_RANGE_USERS",
     "customer base of the range rankings' data"),
    ("--range-apply-seconds", float, 10, None, "Store.apply loop of each range latency row"),
    ("--durability", int, 1, "BENCH_DURABILITY",
     "1: the project's ingest at each Redis durability level"),
    ("--cluster", int, 1, "BENCH_CLUSTER", "1: the project's ingest on a standalone Redis and "
     "on a local Redis Cluster of 3 primaries"),
    ("--baseline", str, "", "BENCH_BASELINE", "a git revision (e.g. HEAD~3, a tag): its "
     "worker's ingest beside this checkout's at 0 ms, --rounds times interleaved (at least "
     "once), for a before/after ratio"),
    ("--parts", str, ",".join(PARTS), "BENCH_PARTS",
     f"comma-separated parts to run among {', '.join(PARTS)} (all by default)"),
    ("--sqs-price-per-million", float, SQS_PRICE_PER_MILLION, "BENCH_SQS_PRICE_PER_MILLION",
     "US dollars per million SQS requests of the capacity table"),
    ("--sqs-price-date", str, SQS_PRICE_DATE, "BENCH_SQS_PRICE_DATE",
     "when that price was read"),
    ("--out", Path, PROJECT_ROOT / "bench" / "results", None,
     "where latest.md, latest.json and the logs go"),
)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv):
    """Options, with defaults from BENCH_* environment variables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, kind, default, variable, text in OPTIONS:
        if variable:
            # An empty variable keeps the default.
            default = kind(os.environ.get(variable) or default)
            text += f" [{variable}]"
        parser.add_argument(option, type=kind, default=default, help=text)
    return parser.parse_args(argv)


def main(argv=None):
    """Run everything once; print the table and write latest.md and latest.json."""
    args = parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - set(PARTS):
        raise SystemExit(f"--parts: choose among {', '.join(PARTS)}, not {args.parts!r}")
    args.scale_orders = args.scale_orders or args.orders
    log_dir = args.out / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)  # logs append: start from empty ones
    log_dir.mkdir(parents=True)
    scale_users = [int(n) for n in args.scale_users.split(",") if n.strip()]
    rtts = sorted({float(n) for n in args.rtts.split(",") if n.strip()} | {0.0})
    scale_out = sorted({int(n) for n in args.worker_processes.split(",") if n.strip()} | {1})
    api_connections = [int(n) for n in args.api_connections.split(",") if n.strip()]
    results = {"meta": report.machine(), "settings": {
        "orders": args.orders, "users": args.users, "products": args.products,
        "rtts_ms": rtts, "worker_processes": scale_out,
        "api_seconds": args.api_seconds, "api_connections": api_connections,
        "api_only": args.api_only, "scale_users": scale_users,
        "scale_orders": args.scale_orders, "max_seconds": args.max_seconds,
        "files_items": args.files_items, "durability": args.durability,
        "range_orders_per_day": args.range_orders_per_day, "range_days": args.range_days,
        "cluster": args.cluster, "rounds": args.rounds, "baseline": args.baseline,
        "files_larger": args.files_larger, "parts": sorted(parts),
        "sqs_price_per_million": args.sqs_price_per_million,
        "sqs_price_date": args.sqs_price_date}, "ingest": []}
    # SIGTERM (make interrupted, a test's timeout) unwinds like Ctrl-C: every server stops.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as exits, tempfile.TemporaryDirectory(prefix="bench-") as stack_dir:
        stack = start_stack(Path(stack_dir), log_dir, exits)
        stack.max_seconds = args.max_seconds
        results["meta"]["redis_server"] = stack.data_meter.client.info("server")["redis_version"]
        if "ingest" in parts:
            orders = Orders.generate(args.orders, users=args.users, products=args.products)
            results["settings"]["describe"] = orders.describe()
            warm_up(stack, orders)
            if args.api_only:
                gunicorn, api_url = start_gunicorn(stack)
                exits.callback(gunicorn.stop)
                results["ingest"] = [run_project(stack, orders, api_url=api_url)]
                results.update(run_api_phase(stack, orders, gunicorn, api_url,
                                             args.api_seconds, api_connections))
                return _write(args, results)
            # The proxy check compares two rates near each other on shared cores: each drain
            # runs twice, interleaved, and its row is the better run.
            drains = [run_drain(stack, orders, through_proxy=through_proxy)
                      for through_proxy in (False, True, False, True)]
            results["proxy_check"] = {"direct_per_s": [d["orders_per_s"] for d in drains[0::2]],
                                      "proxy_per_s": [d["orders_per_s"] for d in drains[1::2]]}
            results["ingest"] = [max(drains[0::2], key=lambda d: d["orders_per_s"]),
                                 max(drains[1::2], key=lambda d: d["orders_per_s"]),
                                 run_seed(stack, orders),
                                 run_stock_celery(stack, orders),
                                 run_stock_celery(stack, orders, tuned=True),
                                 run_bare_loop(stack, orders)]
            gunicorn, api_url = start_gunicorn(stack)
            exits.callback(gunicorn.stop)
            results["ingest"].append(run_project(stack, orders, api_url=api_url))
            for rtt in rtts[1:]:
                stack.set_rtt(rtt)
                results["ingest"] += [run_drain(stack, orders, through_proxy=True),
                                      run_seed(stack, orders),
                                      run_stock_celery(stack, orders, tuned=True),
                                      run_bare_loop(stack, orders),
                                      run_project(stack, orders)]
            stack.set_rtt(rtts[-1])
            results["ingest"] += [run_project(stack, orders, processes=n)
                                  for n in scale_out if n > 1]
            stack.set_rtt(0)
            if args.rounds:
                results["rounds"] = run_rounds(stack, orders, args.rounds, rtts[-1], scale_out)
            if args.baseline:
                tree, commit = baseline_tree(args.baseline, Path(stack_dir) / "baseline")
                results["baseline"] = run_baseline(stack, orders, max(args.rounds, 1), tree, commit)
            if args.api_seconds:
                # The API phase reads what the project's worker just wrote.
                results.update(run_api_phase(stack, orders, gunicorn, api_url,
                                             args.api_seconds, api_connections))
                gunicorn.stop()
            results["scale"] = run_scale(stack, scale_users, args.scale_orders, args.products)
            if args.cluster:
                results["cluster"] = run_cluster(stack, orders)
            if args.durability:
                results["durability"] = run_durability(stack, orders, Path(stack_dir) / "durable")
        if args.files_items and "files" in parts:
            results["files"] = files_pipeline.run(stack.data.url, stack.control.url,
                                               stack.sqs.endpoint_url, log_dir, args.files_items,
                                               args.files_larger,
                                               server_members=fixed_members(stack.sqs.process))
        if args.range_orders_per_day and "range" in parts:
            results["range_queries"] = range_queries.run(
                log_dir, args.range_orders_per_day, args.range_days, args.range_users,
                args.range_apply_seconds)
    _write(args, results)


def _write(args, results: dict) -> None:
    """Print the table; write it to latest.md and the raw figures to latest.json."""
    results["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    table = report.markdown(results)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
