"""make bench's API rows: wrk against the project's gunicorn API and the seed-style
FastAPI peer, on the same Redis, with the server's and Redis's CPU.

Both servers are up for the whole phase and each row of one is followed by the same row of
the other, so the ratios compare runs seconds apart, not minutes, on cores shared with
whatever else runs."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import requests
from tqdm import tqdm

from bench.harness import CpuMeter, Orders, Stack, contender, fixed_members
from stack.launch import SCRIPTS, start_api
from stack.services import PROJECT_ROOT, Process, free_port

LUA = PROJECT_ROOT / "bench" / "wrk_paths.lua"
# Live pages left open during the dashboard's cost rows, each polling /dashboard/figures as
# web/static/dashboard.js does (POLL_MS).
DASHBOARD_PAGES = 5
DASHBOARD_POLL_SECONDS = 2.0


def start_gunicorn(stack: Stack) -> tuple[Process, str]:
    """The project's API as shipped (web/gunicorn.conf.py), on a free port."""
    # SQS straight to LocalStack: nothing the API might ask SQS is counted as ingest traffic.
    settings = stack.settings("orders-queue", stack.sqs.endpoint_url)
    return start_api(settings, stack.log_dir, name="gunicorn",
                     env={"PYTHONPATH": str(PROJECT_ROOT)}, ready_path="/stats/global")


def start_peer(stack: Stack) -> tuple[Process, str]:
    """The seed-style FastAPI peer under uvicorn (1 worker, as the seeds run it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = contender(stack, "fastapi-peer", [SCRIPTS / "uvicorn", "bench.fastapi_peer:app",
                                                "--host", "127.0.0.1", "--port", port],
                        {"BENCH_REDIS_URL": stack.data.url}).start_http(f"{url}/stats/global")
    return process, url


def wrk(stack: Stack, server: str, process: Process, url: str, endpoint: str,
        paths: list[str], seconds: int, connections: int) -> dict:
    """`connections` connections for `seconds` from wrk (2 threads), paths drawn at random."""
    paths_file = stack.log_dir / f"wrk-paths-{endpoint.strip('/').replace('/', '-')}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    cpu = CpuMeter({"server": process.members, "redis": fixed_members(stack.data.process)})
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA), url,
               "--", str(paths_file)]
    with tqdm(total=seconds, desc=f"wrk {server} {endpoint} -c{connections}", unit="s", leave=False,
              disable=None) as bar, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True) as load:
        started = time.monotonic()
        while load.poll() is None:
            time.sleep(0.5)
            cpu.sample()
            bar.update(min(seconds, round(time.monotonic() - started)) - bar.n)
        output = load.stdout.read()
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    figures = json.loads(line.split(" ", 1)[1])
    duration = figures["duration_us"] / 1e6
    result = {"server": server, "endpoint": endpoint, "connections": connections,
              "seconds": round(duration, 1),
              "requests": figures["requests"],
              "requests_per_s": round(figures["requests"] / duration, 1),
              "p50_ms": figures["p50_us"] / 1000, "p99_ms": figures["p99_us"] / 1000,
              "max_ms": figures["max_us"] / 1000, "errors": figures["errors"],
              "non_2xx": figures["non_2xx"], "cpu_busy": cpu.busy(duration)}
    tqdm.write(f"wrk {server} {endpoint} -c{connections}: "
               f"{result['requests_per_s']:,.0f} req/s, "
               f"p99 {result['p99_ms']:.1f} ms", file=sys.stderr)
    return result


def api_endpoints(orders: Orders) -> list[tuple[str, list[str]]]:
    """Each endpoint wrk loads, with its paths (user ids with a counted order)."""
    return [("/users/<id>/stats", [f"/users/{user}/stats" for user in orders.counted_users]),
            ("/stats/global", ["/stats/global"])]


def run_api(stack: Stack, orders: Orders, gunicorn: Process, api_url: str, seconds: int,
            connections: list[int]) -> list[dict]:
    """wrk on /users/<id>/stats (ids with a counted order) and /stats/global at each number
    of connections: the project's row, then the peer's, which starts and stops here."""
    peer, peer_url = start_peer(stack)
    servers = [("project: gunicorn + Flask", gunicorn, api_url),
               ("seed-style FastAPI + uvicorn", peer, peer_url)]
    endpoints = api_endpoints(orders)
    results = []
    try:
        for count in connections:
            for endpoint, paths in endpoints:
                results += [wrk(stack, server, process, url, endpoint, paths, seconds, count)
                            for server, process, url in servers]
    finally:
        peer.stop()
    return results


def dashboard_cost(stack: Stack, orders: Orders, gunicorn: Process, api_url: str, seconds: int,
                   connections: int) -> dict:
    """The project's /users/<id>/stats row with no live page open, then with DASHBOARD_PAGES
    pages polling /dashboard/figures, seconds apart."""
    endpoint, paths = api_endpoints(orders)[0]
    without = wrk(stack, "project", gunicorn, api_url, endpoint, paths, seconds, connections)
    stop, answers = threading.Event(), []

    def page(offset: float) -> None:
        stop.wait(offset)
        while not stop.is_set():
            try:
                answers.append(requests.get(f"{api_url}/dashboard/figures", timeout=10)
                               .status_code)
            except requests.RequestException:
                answers.append(0)
            stop.wait(DASHBOARD_POLL_SECONDS)

    pages = [threading.Thread(target=page, args=(n * DASHBOARD_POLL_SECONDS / DASHBOARD_PAGES,),
                              daemon=True) for n in range(DASHBOARD_PAGES)]
    for thread in pages:
        thread.start()
    try:
        with_pages = wrk(stack, f"project, {DASHBOARD_PAGES} live pages open", gunicorn, api_url,
                         endpoint, paths, seconds, connections)
    finally:
        stop.set()
        for thread in pages:
            thread.join(timeout=15)
    return {"pages": DASHBOARD_PAGES, "poll_seconds": DASHBOARD_POLL_SECONDS,
            "polls": len(answers), "failed_polls": sum(code != 200 for code in answers),
            "without": without, "with": with_pages}


def run_api_phase(stack: Stack, orders: Orders, gunicorn: Process, api_url: str, seconds: int,
                  connections: list[int]) -> dict:
    """The API rows against the peer, then the live page's cost at the first connections."""
    return {"api": run_api(stack, orders, gunicorn, api_url, seconds, connections),
            "dashboard_cost": dashboard_cost(stack, orders, gunicorn, api_url, seconds,
                                             connections[0])}
