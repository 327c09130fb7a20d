"""make bench's files row: ~1,000,000 order_items rows from upload until their KPIs are served.

The pipeline (upload to LocalStack S3 -> S3 event on SQS -> a Celery worker -c 2 -> polars
cleaning -> Delta merges on S3 -> KPIs in Redis) is timed against the floor of a bare polars
script doing the same read -> clean -> KPIs on the same files, local, in one process.

    python -m bench.files_pipeline [--items 1000000]     (its own LocalStack and redis-server)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from app import aws, sqs
from app.files.sample import write_sample
from app.settings import Settings
from app.store import FilesStore
from stack.launch import Worker
from stack.services import PROJECT_ROOT, RedisServer, SqsServer, free_port

UPLOADED = ("products.csv", "orders_part1.csv", "order_items_part1.csv")
# The sample writes 2.5 items per order on average.
ITEMS_PER_ORDER = 2.5
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 1200


def generate(out: Path, items: int) -> dict[str, int]:
    """Sample files with about `items` order_items rows (and their orders and products)."""
    return write_sample(out, orders=int(items / ITEMS_PER_ORDER), products=2000, days=365,
                        seed=11)


def floor_main(directory: str) -> None:
    """The bare script: read, clean and compute every KPI from local files; print figures."""
    import polars as pl

    from app.files.cleaning import clean, read_csv
    from app.files.contract import file_type_for
    from app.files.kpis import compute_frames

    started = time.monotonic()
    frames, rows = {}, 0
    for name in UPLOADED:
        file_type = file_type_for(name)
        cleaned = clean(read_csv((Path(directory) / name).read_bytes(), file_type), file_type)
        frames[file_type.name] = cleaned.frame.lazy()
        rows += cleaned.rows_read
    order_kpis, category_kpis = compute_frames(frames["orders"], frames["order_items"],
                                               frames["products"])
    print(json.dumps({"seconds": round(time.monotonic() - started, 2), "rows": rows,
                      "dates": len(order_kpis), "category_rows": len(category_kpis),
                      "polars_threads": pl.thread_pool_size()}))


def run_floor(directory: Path) -> dict:
    """The floor in a child process: its time, rows/s and peak memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    output = subprocess.run([sys.executable, "-m", "bench.files_pipeline", "--floor",
                             str(directory)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    result = json.loads(output.stdout.strip().splitlines()[-1])
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(rows_per_s=round(result["rows"] / result["seconds"]),
                  peak_rss_mb=round(max(peak_kib, before) / 1024))
    return result


def rss_mb(pids: list[int]) -> float:
    """Resident memory of the processes, summed, in MiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run_pipeline(settings: Settings, directory: Path, log_dir: Path) -> dict:
    """Upload the files and time the pipeline until their KPIs are served."""
    sqs.ensure_queues(settings)
    aws.ensure_files_resources(settings)
    worker = Worker(settings, log_dir, name="files",
                    env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
    store = FilesStore.from_url(settings.redis_url)
    s3 = aws.s3_client(settings)
    peak = 0.0
    try:
        started = time.monotonic()
        for name in UPLOADED:
            s3.upload_file(str(directory / name), settings.files_bucket, aws.INPUT + name)
        uploaded = time.monotonic() - started
        served = None
        while True:
            peak = max(peak, rss_mb(worker.service.members()))
            if served is None and store.order_kpis("2024-01-01", "2024-12-31"):
                served = time.monotonic() - started
            done = [e for e in store.executions(5) if e["status"] != "running"]
            if served is not None and done:
                break
            if time.monotonic() - started > TIMEOUT_SECONDS or not worker.service.running:
                raise RuntimeError(f"no KPIs within {TIMEOUT_SECONDS} s:\n{worker.tail()}")
            time.sleep(POLL_SECONDS)
        [record] = done
        # files.finish deletes the events after writing the record: let it end first.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(sqs.depth(settings, settings.files_queue)[k]
                                                  for k in ("visible", "in_flight")):
            time.sleep(POLL_SECONDS)
        rows = record["rows_read"]
        return {"status": record["status"], "rows": rows, "upload_seconds": round(uploaded, 2),
                "seconds_to_kpis": round(served, 2), "rows_per_s": round(rows / served),
                "execution_seconds": record["timings"]["total_seconds"],
                "stage_seconds": record["timings"]["stage_seconds"],
                "kpis_seconds": record["timings"]["kpis_seconds"],
                "dates": len(record["dates"]), "worker_peak_rss_mb": round(peak),
                "window_seconds": settings.files_batch_window}
    finally:
        worker.stop(timeout=30)


def run(redis_url: str, control_url: str, sqs_endpoint: str, log_dir: Path,
        items: int = 1_000_000) -> dict:
    """The files row: sample files, the floor, then the pipeline, on the given servers."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(redis_url=redis_url, control_url=control_url,
                        sqs_endpoint_url=sqs_endpoint, orders_queue=f"bench-files-{suffix}",
                        files_queue=f"bench-files-{suffix}-events",
                        files_bucket=f"bench-files-{suffix}", files_batch_window=2)
    with tempfile.TemporaryDirectory(prefix="bench-files-") as directory:
        written = generate(Path(directory), items)
        result = {"files": {n: written[n] for n in UPLOADED},
                  "floor": run_floor(Path(directory)),
                  "pipeline": run_pipeline(settings, Path(directory), log_dir)}
    result["pipeline_vs_floor"] = round(result["pipeline"]["rows_per_s"]
                                        / result["floor"]["rows_per_s"], 3)
    return result


def markdown(result: dict) -> str:
    """The files row as a small Markdown table."""
    floor, pipeline = result["floor"], result["pipeline"]
    return "\n".join([
        f"Files: {result['files']['order_items_part1.csv']:,} order_items rows, "
        f"{result['files']['orders_part1.csv']:,} orders, "
        f"{result['files']['products.csv']:,} products "
        f"({pipeline['rows']:,} rows), upload → KPIs in Redis",
        "",
        "| Contender | Seconds | Rows/s | Peak memory |",
        "|---|---|---|---|",
        f"| bare polars script, local files (floor) | {floor['seconds']} | "
        f"{floor['rows_per_s']:,} | {floor['peak_rss_mb']} MiB |",
        f"| files pipeline (S3, SQS, worker -c 2, Delta on S3, Redis; "
        f"{pipeline['window_seconds']:g} s window included) | {pipeline['seconds_to_kpis']} | "
        f"{pipeline['rows_per_s']:,} ({result['pipeline_vs_floor']}× the floor) | "
        f"{pipeline['worker_peak_rss_mb']} MiB (worker and pool) |",
        ""])


def main(argv=None):
    """Run the files row alone, on its own LocalStack and redis-server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
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
                         args.items)
        finally:
            server.stop()
            data.cleanup()
    (args.out / "files.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
