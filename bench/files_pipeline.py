"""make bench's files rows: ~1,000,000 order_items rows, then ten times as many, from upload
until their KPIs are served.

The pipeline (upload to LocalStack S3 -> S3 event on SQS -> a Celery worker -c 2 -> polars
cleaning -> Delta merges on S3 -> KPIs in Redis) is timed against the floor of a bare polars
streaming script doing the same read -> clean -> KPIs on the same files, local, in one
process. Peak memory is each process's VmHWM (the kernel's peak RSS); CPU seconds are the
floor's process against the files worker's processes and the S3/SQS server's (LocalStack
shares the machine's cores with the worker here, where AWS's S3 would not). On the larger
files, orders go to the orders queue one by one throughout, counted by an orders worker of
its own (as `make run` runs them): their latency while the files worker is idle, then while
it processes the files, shows whether orders keep being counted meanwhile.

    python -m bench.files_pipeline [--items 1000000] [--larger 10] [--orders-per-s 20]
                                                     (its own LocalStack and redis-server)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

from app import aws, sqs
from app.files.sample import write_sample
from app.settings import Settings
from app.store import FilesStore, order_key
from bench.harness import CpuMeter, fixed_members
from bench.order_builders import order_body
from stack.launch import Worker, files_queues, orders_queues
from stack.services import PROJECT_ROOT, RedisServer, SqsServer, free_port

UPLOADED = ("products.csv", "orders_part1.csv", "order_items_part1.csv")
# The sample writes 2.5 items per order on average.
ITEMS_PER_ORDER = 2.5
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 3600
# What the files issues ask of the pipeline against the floor.
TARGET_RATE_RATIO, TARGET_PEAK_RATIO = 0.5, 1.3
# Orders sent one by one while the larger files are processed, and for this long before,
# with the files worker idle (the baseline of their latency).
ORDERS_PER_S, IDLE_SECONDS = 20, 15
# What "orders keep being counted meanwhile" asks: the orders sent while the files are
# processed are counted while they are, about as fast as with the files worker idle.
TARGET_COUNTED_SHARE, TARGET_P99_SECONDS = 0.95, 2.0


def generate(out: Path, items: int) -> dict[str, int]:
    """Sample files with about `items` order_items rows (and their orders and products)."""
    return write_sample(out, orders=int(items / ITEMS_PER_ORDER), products=2000, days=365,
                        seed=11)


def enlarge(source: Path, out: Path, factor: int) -> dict[str, int]:
    """The sample files `factor` times over, streamed by polars: copy k's order and item ids
    get a prefix "k-", products stay (the same catalogue sold more); rows written per file."""
    import polars as pl

    from app.files.contract import file_type_for
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in UPLOADED:
        frame = pl.scan_csv(source / name, infer_schema=False)
        if file_type_for(name).name != "products":
            ids = [c for c in ("id", "order_id") if c in frame.collect_schema().names()]
            frame = pl.concat([frame.with_columns(
                pl.when(pl.col(c).is_null()).then(None).otherwise(pl.lit(f"{k}-") + pl.col(c))
                .alias(c) for c in ids) for k in range(factor)])
        frame.sink_csv(out / name)
        written[name] = pl.scan_csv(out / name, infer_schema=False).select(
            pl.len()).collect().item()
    return written


def floor_main(directory: str) -> None:
    """The bare script: read and clean local files, write each cleaned table as a local Delta
    table (the issue's read, validate, write), compute every KPI; print figures. It holds
    each file's judged rows and its cleaned frame, as a script does."""
    import polars as pl

    from app.files.cleaning import DROPPED_BY, as_staged, judged, scan_csv
    from app.files.contract import file_type_for
    from app.files.kpis import compute_frames

    started, cpu_started = time.monotonic(), time.process_time()
    frames, rows, write_seconds = {}, 0, 0.0
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tables:
        for name in UPLOADED:
            file_type = file_type_for(name)
            rows_judged = judged(scan_csv(Path(directory) / name, file_type), file_type
                                 ).collect(engine="streaming")
            rows_judged.group_by(DROPPED_BY).len()  # the drops per rule, as a report counts
            frame = as_staged(rows_judged.filter(pl.col(DROPPED_BY).is_null()).filter(
                pl.col(file_type.key).is_last_distinct()), file_type)
            rows += rows_judged.height
            del rows_judged  # only the cleaned frames are held from here
            writing = time.monotonic()
            frame.write_delta(Path(tables) / file_type.table, mode="overwrite",
                              delta_write_options={
                                  "partition_by": list(file_type.partition_by) or None})
            write_seconds += time.monotonic() - writing
            frames[file_type.name] = frame.lazy()
        order_kpis, category_kpis = compute_frames(frames["orders"], frames["order_items"],
                                                   frames["products"])
        seconds = time.monotonic() - started
        cpu_seconds = time.process_time() - cpu_started  # every thread of polars' pool
    print(json.dumps({"seconds": round(seconds, 2), "write_seconds": round(write_seconds, 2),
                      "cpu_seconds": round(cpu_seconds, 2),
                      "rows": rows, "dates": len(order_kpis),
                      "category_rows": len(category_kpis),
                      "polars_threads": pl.thread_pool_size(),
                      "peak_rss_mb": round(peak_kib(os.getpid()) / 1024)}))


def run_floor(directory: Path) -> dict:
    """The floor in a child process: its time, rows/s (with and without its writes) and peak
    memory."""
    output = subprocess.run([sys.executable, "-m", "bench.files_pipeline", "--floor",
                             str(directory)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    result = json.loads(output.stdout.strip().splitlines()[-1])
    result.update(rows_per_s=round(result["rows"] / result["seconds"]),
                  rows_per_s_without_write=round(
                      result["rows"] / (result["seconds"] - result["write_seconds"])))
    return result


def peak_kib(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM) in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class OrderProbe:
    """Valid orders sent one at a time at a steady rate to the orders queue, each timed
    from its send until its claim is in Redis (the order is counted), in a thread."""

    def __init__(self, settings: Settings, per_s: float):
        self.client = sqs.client(settings)
        self.url = sqs.queue_url(settings, settings.orders_queue, self.client)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.period = 1 / per_s
        self.sent: dict[str, float] = {}  # order id -> monotonic send time
        self.counted: dict[str, float] = {}  # order id -> first poll that saw its claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="order-probe", daemon=True)

    def start(self) -> "OrderProbe":
        """Send and poll until stopped."""
        self._thread.start()
        return self

    def _run(self):
        tick = time.monotonic()
        while not self._stop.is_set():
            order_id = f"probe-{len(self.sent)}"
            self.sent[order_id] = time.monotonic()
            if sqs.send_bodies(self.client, self.url, [order_body(order_id, "U-probe")]):
                self.sent.pop(order_id)  # refused by SQS: not an order of the figures
            self._poll()
            tick += self.period
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def _poll(self):
        pending = [i for i in self.sent if i not in self.counted]
        if not pending:
            return
        pipe = self.redis.pipeline(transaction=False)
        for order_id in pending:
            pipe.exists(order_key(order_id))
        now = time.monotonic()
        self.counted.update((i, now) for i, found in zip(pending, pipe.execute()) if found)

    def stop(self, drain_seconds: float = 30):
        """Stop sending; poll until every order sent is counted or drain_seconds passed."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + drain_seconds
        while len(self.counted) < len(self.sent) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self._poll()

    def window(self, start: float, end: float) -> dict:
        """The figures of the orders sent in [start, end) (orders_window)."""
        return orders_window(self.sent, self.counted, start, end)


def orders_window(sent: dict[str, float], counted: dict[str, float], start: float,
                  end: float) -> dict:
    """Of the orders sent in [start, end) (id -> send time; counted: id -> when counted):
    how many, how many were counted by `end`, and the latency to counted of those counted
    at all (p50, p99, max), in seconds."""
    ids = [i for i, at in sent.items() if start <= at < end]
    latencies = sorted(counted[i] - sent[i] for i in ids if i in counted)

    def quantile(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * q))], 3)
    return {"seconds": round(end - start, 1), "sent": len(ids),
            "counted_meanwhile": sum(i in counted and counted[i] < end for i in ids),
            "counted_ever": len(latencies), "p50_s": quantile(0.5), "p99_s": quantile(0.99),
            "max_s": quantile(1.0)}


def run_pipeline(settings: Settings, directory: Path, log_dir: Path, rows: int,
                 orders_per_s: float = 0, server_members=lambda: []) -> dict:
    """Upload the files and time the pipeline until the KPIs of all `rows` are served.

    An upload longer than the batch window splits the files over several executions: the
    clock stops when the last one has written its KPIs (its end less its archiving step).
    With orders_per_s, orders are counted by a worker of their own from IDLE_SECONDS before
    the upload until the KPIs are served (result["orders"]). CPU seconds from the upload
    until the KPIs: the files worker's processes, and server_members' (the S3/SQS server).
    """
    sqs.ensure_queues(settings)
    aws.ensure_files_resources(settings)
    env = {"PYTHONPATH": str(PROJECT_ROOT)}
    # The files worker and the orders worker consume their own queues, as in make run.
    worker = Worker(settings, log_dir, name="files", env=env,
                    queues=files_queues(settings)).start()
    orders_worker = probe = None
    store = FilesStore.from_url(settings.redis_url)
    s3 = aws.s3_client(settings)
    peaks: dict[int, int] = {}  # pid -> VmHWM KiB, main process and pool alike
    try:
        if orders_per_s:
            orders_worker = Worker(settings, log_dir, name="orders", env=env,
                                   queues=orders_queues(settings)).start()
            probe = OrderProbe(settings, orders_per_s).start()
            idle_from = time.monotonic()
            time.sleep(IDLE_SECONDS)
        cpu = CpuMeter({"worker": worker.service.members, "server": server_members})
        started = time.monotonic()
        for name in UPLOADED:
            s3.upload_file(str(directory / name), settings.files_bucket, aws.INPUT + name)
        uploaded = time.monotonic() - started
        while True:
            for pid in worker.service.members():
                peaks[pid] = max(peaks.get(pid, 0), peak_kib(pid))
            cpu.sample()
            records = store.executions(20)
            if any(r["status"] == "failed" for r in records):
                raise RuntimeError(f"an execution failed:\n{worker.tail()}")
            done = [r for r in records if r["status"] == "succeeded"]
            if len(done) == len(records) and sum(r["rows_read"] for r in done) >= rows:
                break
            if time.monotonic() - started > TIMEOUT_SECONDS or not worker.service.running:
                raise RuntimeError(f"no KPIs within {TIMEOUT_SECONDS} s:\n{worker.tail()}")
            time.sleep(POLL_SECONDS)
        last = max(done, key=lambda r: r["finished_at"])
        served = time.monotonic() - started - last["timings"]["finish_seconds"]
        orders = None
        if probe is not None:
            probe.stop()
            orders = {"per_s": orders_per_s, "idle": probe.window(idle_from, started),
                      "files": probe.window(started, started + served)}
        # files.finish deletes the events after writing the record: let it end first.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(sqs.depth(settings, settings.files_queue)[k]
                                                  for k in ("visible", "in_flight")):
            time.sleep(POLL_SECONDS)
        rows = sum(r["rows_read"] for r in done)
        return {"status": "succeeded", "rows": rows, "executions": len(done),
                "upload_seconds": round(uploaded, 2), "seconds_to_kpis": round(served, 2),
                "rows_per_s": round(rows / served),
                "stage_seconds": {n: s for r in done
                                  for n, s in r["timings"]["stage_seconds"].items()},
                "kpis_seconds": [r["timings"]["kpis_seconds"] for r in done],
                "dates": len({d for r in done for d in r["dates"]}),
                # The largest process is the pool process of the largest file's step; the
                # sum adds the main process and the other pool process (peaks at any time).
                "process_peak_rss_mb": round(max(peaks.values()) / 1024),
                "worker_peak_rss_mb": round(sum(peaks.values()) / 1024),
                "window_seconds": settings.files_batch_window,
                "cpu_seconds": {name: round(cpu.total(name), 2) for name in cpu.groups},
                **({"orders": orders} if orders else {})}
    finally:
        if probe is not None:
            probe.stop(drain_seconds=0)
        if orders_worker is not None:
            orders_worker.stop(timeout=30)
        worker.stop(timeout=30)


def run_size(settings: Settings, directory: Path, log_dir: Path, written: dict,
             orders_per_s: float = 0, server_members=lambda: []) -> dict:
    """One size's row: the floor, then the pipeline, on the same files (with orders sent
    meanwhile at orders_per_s, 0 for none; server_members: the S3/SQS server's processes)."""
    result = {"files": {n: written[n] for n in UPLOADED},
              "bytes": sum((directory / n).stat().st_size for n in UPLOADED),
              "floor": run_floor(directory),
              "pipeline": run_pipeline(settings, directory, log_dir,
                                       sum(written[n] for n in UPLOADED), orders_per_s,
                                       server_members)}
    floor, pipeline = result["floor"], result["pipeline"]
    result["pipeline_vs_floor"] = round(pipeline["rows_per_s"] / floor["rows_per_s"], 3)
    # Against the script as it was before it wrote its tables: read, clean and KPIs only.
    result["pipeline_vs_floor_without_write"] = round(
        pipeline["rows_per_s"] / floor["rows_per_s_without_write"], 3)
    result["process_peak_vs_floor"] = round(pipeline["process_peak_rss_mb"]
                                            / floor["peak_rss_mb"], 2)
    result["worker_peak_vs_floor"] = round(pipeline["worker_peak_rss_mb"]
                                           / floor["peak_rss_mb"], 2)
    return result


def run(redis_url: str, control_url: str, sqs_endpoint: str, log_dir: Path,
        items: int = 1_000_000, larger: int = 10, orders_per_s: float = ORDERS_PER_S,
        server_members=lambda: []) -> dict:
    """The files rows: sample files, the floor, then the pipeline, on the given servers; the
    same again on files `larger` times as large (0: not), with orders sent meanwhile.
    server_members: the processes of the S3/SQS server, whose CPU the rows report."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-files-") as directory:
        base = Path(directory) / "x1"
        written = generate(base, items)
        for index, factor in enumerate([1] + ([larger] if larger > 1 else [])):
            suffix = uuid.uuid4().hex[:8]
            # Each size's KPIs and execution in a database of their own (2, 3 of the server).
            settings = Settings(redis_url=f"{redis_url.rsplit('/', 1)[0]}/{2 + index}",
                                control_url=control_url,
                                sqs_endpoint_url=sqs_endpoint,
                                orders_queue=f"bench-files-{suffix}",
                                files_queue=f"bench-files-{suffix}-events",
                                files_bucket=f"bench-files-{suffix}", files_batch_window=2)
            if factor == 1:
                rows.append({"factor": 1, **run_size(settings, base, log_dir, written,
                                                     server_members=server_members)})
            else:
                scaled = Path(directory) / f"x{factor}"
                rows.append({"factor": factor, **run_size(settings, scaled, log_dir,
                                                          enlarge(base, scaled, factor),
                                                          orders_per_s, server_members)})
                shutil.rmtree(scaled)
    return {"sizes": rows, "targets": {"rows_per_s_ratio": TARGET_RATE_RATIO,
                                       "peak_ratio": TARGET_PEAK_RATIO,
                                       "orders_counted_share": TARGET_COUNTED_SHARE,
                                       "orders_p99_seconds": TARGET_P99_SECONDS}}


def markdown(result: dict) -> str:
    """The files rows as a small Markdown table."""
    first = result["sizes"][0]
    lines = [
        f"Files: {first['files']['order_items_part1.csv']:,} order_items rows, "
        f"{first['files']['orders_part1.csv']:,} orders, "
        f"{first['files']['products.csv']:,} products "
        f"({first['pipeline']['rows']:,} rows, {first['bytes'] / 2**20:,.0f} MiB), "
        + "".join(f"then {size['factor']}× as many, " for size in result["sizes"][1:])
        + "upload → KPIs in Redis. Peak memory: VmHWM of the largest process, and summed "
        "over the worker's main and pool processes. CPU seconds: the script's process; the "
        "files worker's processes + the S3/SQS server's (LocalStack, on the same cores) "
        "from the upload until the KPIs. Targets: rows/s ≥ "
        f"{result['targets']['rows_per_s_ratio']}× the floor's, peak ≤ "
        f"{result['targets']['peak_ratio']}× the floor's.",
        "",
        "| Rows | MiB | Contender | Seconds | Rows/s | Peak, largest process | "
        "Peak, worker summed | CPU seconds |",
        "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for size in result["sizes"]:
        floor, pipeline = size["floor"], size["pipeline"]
        head = f"| {pipeline['rows']:,} | {size['bytes'] / 2**20:,.0f} |"
        lines += [
            f"{head} bare polars streaming script, local files, Delta tables written locally "
            f"(floor; {floor['write_seconds']} s of writes) | {floor['seconds']} | "
            f"{floor['rows_per_s']:,} | {floor['peak_rss_mb']:,} MiB | – | "
            f"{floor.get('cpu_seconds', '–')} |",
            f"{head} files pipeline (S3, SQS, worker -c 2, Delta on S3, Redis; "
            f"{pipeline['window_seconds']:g} s window included) | {pipeline['seconds_to_kpis']} | "
            f"{pipeline['rows_per_s']:,} ({size['pipeline_vs_floor']}× the floor, "
            f"{size['pipeline_vs_floor_without_write']}× without its writes) | "
            f"{pipeline['process_peak_rss_mb']:,} MiB ({size['process_peak_vs_floor']}×) | "
            f"{pipeline['worker_peak_rss_mb']:,} MiB ({size['worker_peak_vs_floor']}×) | "
            f"{pipeline_cpu(pipeline)} |"]
    return "\n".join(lines + [""] + orders_markdown(result))


def pipeline_cpu(pipeline: dict) -> str:
    """The pipeline's CPU seconds: worker + S3/SQS server, or what of it was measured."""
    cpu = pipeline.get("cpu_seconds")
    if not cpu:
        return "–"
    if not cpu.get("server"):
        return f"{cpu['worker']} (worker)"
    return f"{cpu['worker']} + {cpu['server']} = {cpu['worker'] + cpu['server']:.2f}"


def orders_markdown(result: dict) -> list[str]:
    """Orders counted while files are processed: a small table, or nothing if none ran."""
    sizes = [size for size in result["sizes"] if "orders" in size["pipeline"]]
    if not sizes:
        return []
    lines = [f"Orders meanwhile: valid orders sent one by one at "
             f"{sizes[0]['pipeline']['orders']['per_s']:g}/s to the orders queue, counted by an "
             "orders worker -c 2 of their own beside the files worker (as in make run); latency "
             "from the send until the order's claim is in Redis (polled at each send).",
             "",
             "| Rows of the files | Files worker | Seconds | Orders sent | Counted meanwhile | "
             "p50 | p99 | max |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        orders = size["pipeline"]["orders"]
        for label, key in (("idle (before the upload)", "idle"),
                           ("processing the files", "files")):
            w = orders[key]
            lines.append(f"| {size['pipeline']['rows']:,} | {label} | {w['seconds']} | "
                         f"{w['sent']:,} | {w['counted_meanwhile']:,} | {w['p50_s']} s | "
                         f"{w['p99_s']} s | {w['max_s']} s |")
    return lines + [""]


def files_targets(result: dict | None) -> list[tuple[str, str, bool]]:
    """The files targets against a run's figures: (target, measured, met), per size."""
    found = []
    for size in (result or {}).get("sizes", []):
        rows = f"{size['pipeline']['rows']:,} rows"
        found += [
            (f"files rows/s ≥ {TARGET_RATE_RATIO}× the bare polars script, {rows}",
             f"{size['pipeline_vs_floor']}×", size["pipeline_vs_floor"] >= TARGET_RATE_RATIO),
            (f"files peak memory ≤ {TARGET_PEAK_RATIO}× the script's, largest process, {rows}",
             f"{size['process_peak_vs_floor']}×",
             size["process_peak_vs_floor"] <= TARGET_PEAK_RATIO),
            (f"files peak memory ≤ {TARGET_PEAK_RATIO}× the script's, worker summed, {rows}",
             f"{size['worker_peak_vs_floor']}×",
             size["worker_peak_vs_floor"] <= TARGET_PEAK_RATIO)]
        if "orders" in size["pipeline"]:
            idle, busy = (size["pipeline"]["orders"][k] for k in ("idle", "files"))
            share = busy["counted_meanwhile"] / busy["sent"] if busy["sent"] else 0.0
            found += [
                (f"orders sent while the files are processed, counted meanwhile ≥ "
                 f"{TARGET_COUNTED_SHARE:.0%}, {rows}",
                 f"{busy['counted_meanwhile']:,} of {busy['sent']:,} ({share:.1%})",
                 share >= TARGET_COUNTED_SHARE),
                (f"orders' p99 send → counted while the files are processed ≤ "
                 f"{TARGET_P99_SECONDS:g} s, {rows}",
                 f"{busy['p99_s']} s (files worker idle: {idle['p99_s']} s)",
                 busy["p99_s"] is not None and busy["p99_s"] <= TARGET_P99_SECONDS)]
    return found


def main(argv=None):
    """Run the files row alone, on its own LocalStack and redis-server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--larger", type=int, default=10,
                        help="a second row on files this many times as large; 0 for none")
    parser.add_argument("--orders-per-s", type=float, default=ORDERS_PER_S,
                        help="orders sent meanwhile on the larger files; 0 for none")
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.floor:
        return floor_main(args.floor)
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-files-stack-") as stack_dir:
        data = RedisServer(free_port(), log_dir=log_dir, name="redis-files")
        server = SqsServer(free_port(), data_dir=Path(stack_dir) / "ls", log_dir=log_dir)
        try:
            data.start()
            server.start()
            result = run(data.url, data.url.replace("/0", "/1"), server.endpoint_url, log_dir,
                         args.items, args.larger, args.orders_per_s,
                         fixed_members(server.process))
        finally:
            server.stop()
            data.cleanup()
    (args.out / "files.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    for target, measured, met in files_targets(result):
        print(f"- {target}: {measured} ({'met' if met else 'not met'})")


if __name__ == "__main__":
    main()
