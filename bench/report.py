"""The machine a run measured on, and the Markdown table of its results."""
from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from importlib import metadata

from bench.files_pipeline import files_targets, markdown as files_markdown
from bench.harness import STEADY_FROM, STEADY_TO
from bench.range_queries import markdown as range_markdown
from stack.services import PROJECT_ROOT, sqs_server_python

PACKAGES = ("celery", "kombu", "boto3", "redis", "gunicorn", "flask", "fastapi", "uvicorn")
# The project code the run measured: its worker is whatever these files hold right now.
PROJECT_CODE = ("app", "tasks", "web", "celeryconfig.py")


def _run(command: list, cwd=PROJECT_ROOT) -> str:
    """A command's first output line, or '?' if it cannot run."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=cwd)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def cpu_model() -> str:
    """The model name in /proc/cpuinfo."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine() -> dict:
    """Date, CPU, memory, load, versions and the project code's commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    mem_kb = next((int(line.split()[1]) for line in open("/proc/meminfo")
                   if line.startswith("MemTotal:")), 0)
    changes = subprocess.run(["git", "status", "--porcelain", "--", *PROJECT_CODE],
                             capture_output=True, text=True, cwd=PROJECT_ROOT).stdout
    localstack = _run([str(sqs_server_python()), "-c", "import importlib.metadata as m, sys; "
                       "print(m.version('localstack-core'), 'on Python', sys.version.split()[0])"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(), "cpu": cpu_model(), "memory_gib": round(mem_kb / 2**20),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "packages": versions,
        "localstack": localstack, "wrk": _run(["wrk", "-v"]).split(" [")[0],
        "commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "uncommitted_project_changes": bool(changes.strip()),
    }


def _n(value, digits: int = 0) -> str:
    """A number with thousands separators, or a dash."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _per(count: int, orders: int) -> str:
    return f"{count / orders:.2f}" if orders else "–"


def _busy(cpu: dict, names) -> str:
    """CPU use as percent of one core, in the order of names."""
    return " · ".join(f"{cpu.get(name, 0) * 100:.0f}" for name in names)


def _top(calls: dict, limit: int = 4) -> str:
    """The most frequent entries of a counter, e.g. 'EVALSHA 2,000, HGETALL 12'."""
    ranked = sorted(calls.items(), key=lambda item: -item[1])
    text = ", ".join(f"{name} {count:,}" for name, count in ranked[:limit])
    return text + (", …" if len(ranked) > limit else "") if text else "none"


def _table(columns: list[str], align: str, rows) -> list[str]:
    """A Markdown table: its header, its alignment (l or r a column), a line a row of cells."""
    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"
    return [line(columns), line("---:" if a == "r" else "---" for a in align),
            *(line(cells) for cells in rows)]


def _check(row: dict) -> str:
    """A contender row's check, after its status unless it ran to the end."""
    return row["check"] if row["status"] == "ok" else row["status"] + "; " + row["check"]


def _header(results: dict) -> list[str]:
    meta, settings = results["meta"], results["settings"]
    packages = ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
    code = meta["commit"] + (" + uncommitted changes in app/, tasks/, web/"
                             if meta["uncommitted_project_changes"] else "")
    return [
        f"## Benchmark run of {meta['date']}",
        "",
        f"Machine: {meta['nproc']} × {meta['cpu']} (nproc {meta['nproc']}), "
        f"{meta['memory_gib']} GiB, 1-minute load average {meta['load_average'][0]} at start "
        f"and {meta.get('load_average_end', ['?'])[0]} at the end; "
        f"Python {meta['python']}; {packages}; redis-server {meta.get('redis_server', '?')}; "
        f"LocalStack SQS (localstack-core {meta['localstack']}); {meta['wrk']}. "
        f"Project code: {code}. Everything shares the same cores: the SQS server, Redis, "
        f"the contender, the counting proxy and the harness.",
        "",
        f"Orders: {settings.get('describe', '')}; the same bodies for every contender, "
        f"pre-queued on a fresh queue, Redis flushed before each.",
    ]


def _name(row: dict) -> str:
    """The contender's name in the tables, with its worker processes if more than one."""
    processes = row.get("processes", 1)
    return row["contender"] + (f", {processes} worker processes" if processes > 1 else "")


def _ingest(results: dict) -> list[str]:
    rows = results["ingest"]

    def cells(r: dict) -> list[str]:
        orders = r["done"] or r["orders"]
        sqs = sum(r["sqs_requests"].values())
        proxied = "no proxy" not in r["contender"]
        return [_name(r), _n(r.get("rtt_ms", 0)) if proxied else "–", _n(r["orders_per_s"]),
                _n(r["steady_per_s"]), f"{r['seconds']:.1f}",
                _per(sqs, orders) if proxied else "(not counted)",
                _n(sqs / r["seconds"]) if proxied else "–", _per(r["redis_round_trips"], orders),
                _per(sum(r["redis_commands"].values()), orders),
                _per(r["control_round_trips"], orders), _n(r.get("cpu_ms_per_order"), 2),
                _busy(r["cpu_busy"], ("sqs", "contender", "redis", "proxy")), _check(r)]

    lines = ["", "### Ingest: orders/s from worker start until everything is processed", ""]
    lines += _table(["contender", "round trip ms", "orders/s", "orders/s after the first",
                     "seconds", "SQS requests per order", "SQS requests/s",
                     "Redis round trips per order", "Redis commands per order (incl. in Lua)",
                     "control-plane round trips per order", "contender CPU ms per order",
                     "CPU % of a core: SQS server · contender · Redis · proxy", "check"],
                    "lrrrrrrrrrrll", map(cells, rows))
    lines += ["", "Where the requests went (whole run of each contender):", ""]
    lines += _table(["contender", "round trip ms", "SQS requests by action", "messages received",
                     "Redis commands", "control-plane commands"], "lrlrll",
                    ([_name(r), _n(r.get("rtt_ms", 0)), _top(r["sqs_requests"]),
                      _n(r["sqs_messages"].get("received", 0)),
                      _top({k.upper(): v for k, v in r["redis_commands"].items()}),
                      _top({k.upper(): v for k, v in r["control_commands"].items()})]
                     for r in rows if "no proxy" not in r["contender"]))
    check = results.get("proxy_check")
    proxied = _find(rows, "raw drain")
    if check and proxied and max(check["direct_per_s"]):
        ratio = max(check["proxy_per_s"]) / max(check["direct_per_s"])
        lines += ["", "Counting proxy check: the raw drain ran twice straight to LocalStack ("
                  + " and ".join(_n(x) for x in check["direct_per_s"]) + " msg/s) and twice "
                  "through the proxy (" + " and ".join(_n(x) for x in check["proxy_per_s"])
                  + f" msg/s), interleaved; the rows above are the better runs, {ratio:.2f}× "
                  f"through the proxy, which used {proxied['cpu_busy'].get('proxy', 0) * 100:.0f}%"
                  " of a core."]
    return lines


# The API's targets against the seed-style peer, at each number of connections.
API_THROUGHPUT_TARGET = 1.5  # requests/s at least this many times the peer's
API_P99_TARGET = 0.5  # p99 at most this share of the peer's
# Live pages left open may cost the API at most this share of its requests/s and p50.
DASHBOARD_COST_TARGET = 0.05
PEER = "FastAPI"


def _api_pairs(results: dict) -> list[tuple[dict, dict | None]]:
    """Each project API row with the peer's row of the same endpoint and connections."""
    api = results.get("api", [])
    return [(r, next((p for p in api if PEER in p["server"] and p["endpoint"] == r["endpoint"]
                      and p.get("connections", 32) == r.get("connections", 32)), None))
            for r in api if "project" in r["server"]]


def _dashboard_cost(results: dict) -> list[str]:
    cost = results["dashboard_cost"]
    lines = ["", f"### The live page's cost: `/users/<id>/stats` without and with {cost['pages']} "
             f"pages polling `/dashboard/figures` every {cost['poll_seconds']:.0f} s "
             f"({cost['polls']} polls, {cost['failed_polls']} failed)", ""]
    return lines + _table(
        ["live pages", "connections", "requests/s", "p50 ms", "p99 ms", "errors · non-2xx"],
        "rrrrrr", ([str(pages), str(r["connections"]), _n(r["requests_per_s"]),
                    f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['errors']} · {r['non_2xx']}"]
                   for pages, r in ((0, cost["without"]), (cost["pages"], cost["with"]))))


def dashboard_targets(cost: dict | None) -> list[tuple[str, str, bool | None]]:
    """Live pages open must not show in the API's requests/s or median latency."""
    if not cost:
        return []
    quiet, watched = cost["without"], cost["with"]
    throughput = watched["requests_per_s"] / quiet["requests_per_s"]
    median = watched["p50_ms"] / quiet["p50_ms"]
    return [(f"{cost['pages']} live pages open: requests/s ≥ {1 - DASHBOARD_COST_TARGET:.2f}× "
             "without", f"{throughput:.2f}×", throughput >= 1 - DASHBOARD_COST_TARGET),
            (f"{cost['pages']} live pages open: p50 ≤ {1 + DASHBOARD_COST_TARGET:.2f}× without",
             f"{median:.2f}×", median <= 1 + DASHBOARD_COST_TARGET),
            (f"{cost['pages']} live pages open: every poll answered",
             f"{cost['polls'] - cost['failed_polls']} of {cost['polls']}",
             cost["polls"] > 0 and cost["failed_polls"] == 0)]


def _api(results: dict) -> list[str]:
    seconds = results["settings"]["api_seconds"]
    ratios = {id(ours): peer for ours, peer in _api_pairs(results)}

    def cells(r: dict) -> list[str]:
        peer = ratios.get(id(r))
        throughput = p99 = "–"
        if peer and peer["requests_per_s"] and peer["p99_ms"]:
            throughput = f"{r['requests_per_s'] / peer['requests_per_s']:.2f}×"
            p99 = f"{r['p99_ms'] / peer['p99_ms']:.2f}×"
        return [str(r.get("connections", 32)), f"`{r['endpoint']}`", r["server"],
                _n(r["requests_per_s"]), f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", throughput,
                p99, f"{r['errors']} · {r['non_2xx']}", _busy(r["cpu_busy"], ("server", "redis")),
                _per(r["cpu_busy"].get("server", 0) * 1000, r["requests_per_s"])]

    lines = ["", f"### API: wrk, 2 threads, {seconds} s per row, the project's row then the "
             "peer's (user ids drawn from the users with a counted order)", ""]
    return lines + _table(
        ["connections", "endpoint", "server", "requests/s", "p50 ms", "p99 ms",
         f"requests/s ÷ peer (≥ {API_THROUGHPUT_TARGET})", f"p99 ÷ peer (≤ {API_P99_TARGET})",
         "errors · non-2xx", "CPU % of a core: server · Redis", "server CPU ms per request"],
        "rllrrrrrrlr", map(cells, results["api"]))


def _scale(results: dict) -> list[str]:
    count = results["settings"]["scale_orders"]
    lines = ["", f"### Scale: the project's ingest of {count:,} orders at each number of users",
             ""]
    return lines + _table(
        ["users", "users with an order", "orders/s", "orders/s after the first", "ms per order",
         "Redis used_memory Δ", "bytes per user", "bytes per order", "check"], "rrrrrrrrl",
        ([f"{r['users']:,}", f"{r['users_with_orders']:,}", _n(r["orders_per_s"]),
          _n(r["steady_per_s"]), f"{r['ms_per_order']:.2f}",
          f"{r['memory_bytes'] / 2**20:.1f} MiB", _n(r["bytes_per_user"]),
          _n(r["bytes_per_order"]), r["check"] if r["status"] == "ok" else r["status"]]
         for r in results["scale"]))


def _find(rows: list[dict], name: str, rtt_ms: float = 0, processes: int = 1) -> dict | None:
    return next((r for r in rows if r["contender"] == name and r.get("rtt_ms", 0) == rtt_ms
                 and r.get("processes", 1) == processes), None)


PROJECT = "this project as shipped"


# Targets when SQS is a round trip away: ratios of orders/s (key, what it is, at least;
# None: shown, not a target).
RATIO_TARGETS = (("far", "at {far:g} ms, one worker (-c 2) ≥ 0.85× its own 0 ms orders/s", 0.85),
                 ("x2", "at {far:g} ms, 2 worker processes ≥ 1.8× one", 1.8),
                 ("x4", "at {far:g} ms, 4 worker processes ≥ 3.2× one", 3.2),
                 ("drain", "at 0 ms, orders/s ≥ 0.85× the raw drain", 0.85),
                 ("room", "(not a target) room the SQS server leaves for scale-out: the raw "
                  "drain at 0 ms (its ceiling here) over one worker at {far:g} ms", None))


def _far(rows: list[dict]) -> float:
    return max((r.get("rtt_ms", 0) for r in rows), default=0)


def latency_ratios(rows: list[dict], far: float) -> dict[str, float]:
    """The round-trip ratios among rows measured together (one round, or the main rows)."""
    def rate(name, rtt_ms=0, processes=1):
        row = _find(rows, name, rtt_ms, processes)
        return row["orders_per_s"] if row and row["orders_per_s"] else None

    zero, one_far, drain = rate(PROJECT), rate(PROJECT, far), rate("raw drain")
    pairs = {"far": (one_far, zero), "x2": (rate(PROJECT, far, 2), one_far),
             "x4": (rate(PROJECT, far, 4), one_far), "drain": (zero, drain),
             # The SQS server's ceiling over one worker: the most scale-out it leaves room for.
             "room": (drain, one_far)}
    if not far:
        del pairs["far"], pairs["x2"], pairs["x4"], pairs["room"]
    return {key: a / b for key, (a, b) in pairs.items() if a and b}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def latency_targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """The round-trip and scale-out targets against this run's figures: (target, measured, met).

    With rounds, each ratio is the median of the rounds' own ratios (their range beside
    it); without, the ratio of the main rows.
    """
    rows = results["ingest"]
    project = _find(rows, PROJECT)
    if project is None:
        return []
    rounds = results.get("rounds") or []
    far = _far(rows + rounds)
    found = []
    if rounds:
        per_round = [latency_ratios([r for r in rounds if r["round"] == n], far)
                     for n in sorted({r["round"] for r in rounds})]
        for key, text, least in RATIO_TARGETS:
            values = [ratios[key] for ratios in per_round if key in ratios]
            if values:
                middle = _median(values)
                found.append((text.format(far=far),
                              f"{middle:.2f}× (median of {len(values)} round{'s' * (len(values) > 1)}: "
                              + ", ".join(f"{v:.2f}" for v in values) + ")",
                              None if least is None else middle >= least))
    else:
        ratios = latency_ratios(rows, far)
        found += [(text.format(far=far), f"{ratios[key]:.2f}×",
                   None if least is None else ratios[key] >= least)
                  for key, text, least in RATIO_TARGETS if key in ratios]
    ours = [r for r in rows + rounds if r["contender"] == PROJECT and r["done"]]
    sqs = max(sum(r["sqs_requests"].values()) / r["done"] for r in ours)
    trips = max(r["redis_round_trips"] / r["done"] for r in ours)
    found += [("≤ 0.22 SQS requests per order (worst project row)", f"{sqs:.2f}", sqs <= 0.22),
              ("≤ 0.12 Redis round trips per order (worst project row)", f"{trips:.2f}",
               trips <= 0.12)]
    found += scale_out_targets(results)
    bare = _find(rows, "bare batched loop")
    if bare and bare.get("cpu_ms_per_order") and project.get("cpu_ms_per_order"):
        ratio = project["cpu_ms_per_order"] / bare["cpu_ms_per_order"]
        found.append(("worker CPU per order ≤ 1.5× the bare batched loop's (0 ms)",
                      f"{project['cpu_ms_per_order']:.2f} / {bare['cpu_ms_per_order']:.2f} ms "
                      f"= {ratio:.2f}×", ratio <= 1.5))
    return found


def _rounds(results: dict) -> list[str]:
    rounds = results["rounds"]
    far = _far(rounds)
    columns = [("raw drain", 0, 1), (PROJECT, 0, 1)] + sorted(
        {(PROJECT, far, r.get("processes", 1)) for r in rounds if r.get("rtt_ms") == far},
        key=lambda c: c[2])
    names = [f"{'raw drain' if n == 'raw drain' else 'project'} {rtt:g} ms"
             + (f" × {p}" if p > 1 else "") for n, rtt, p in columns]
    count = len({r["round"] for r in rounds})

    def cells(number: int) -> list[str]:
        mine = [r for r in rounds if r["round"] == number]
        found = [str(number)]
        for name, rtt, processes in columns:
            row = _find(mine, name, rtt, processes)
            if row is None:
                found.append("–")
            elif name == "raw drain":  # its progress comes from its log: no steady rate
                found.append(_n(row["orders_per_s"]))
            else:
                found.append(f"{_n(row['orders_per_s'])} ({_n(row['steady_per_s'])})")
        cpu = [_find(mine, PROJECT, rtt) for rtt in (0, far)]
        return found + [" · ".join(_n(r and r.get("cpu_ms_per_order"), 2) for r in cpu)]

    lines = ["", f"### Round-trip ratios: {count} interleaved round{'s' * (count > 1)} "
             "(orders/s; the project's after its first order in brackets)", ""]
    return lines + _table(["round", *names, f"CPU ms per order, project 0 ms · {far:g} ms"],
                          "r" * (len(names) + 2), map(cells, sorted({r["round"] for r in rounds})))


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """The ingest and API targets against this run's figures: (target, measured, met)."""
    rows = results["ingest"]
    project = _find(rows, "this project as shipped")
    if project is None:
        return []
    orders = project["done"] or project["orders"]
    sqs = sum(project["sqs_requests"].values()) / orders
    rtt = project["redis_round_trips"] / orders
    found = [("≤ 0.25 SQS requests per order", f"{sqs:.2f}", sqs <= 0.25),
             ("≤ 0.15 Redis round trips per order", f"{rtt:.2f}", rtt <= 0.15)]
    for name, factor in (("seed-style worker", 3), ("stock Celery", 2), ("raw drain", 0.7)):
        other = _find(rows, name)
        if other and other["orders_per_s"]:
            ratio = project["orders_per_s"] / other["orders_per_s"]
            found.append((f"orders/s ≥ {factor}× {name}", f"{ratio:.2f}×", ratio >= factor))
    for ours, peer in _api_pairs(results):
        at = f"`{ours['endpoint']}` at {ours.get('connections', 32)} connections"
        if peer and peer["requests_per_s"] and peer["p99_ms"]:
            ratio = ours["requests_per_s"] / peer["requests_per_s"]
            found.append((f"{at}: requests/s ≥ {API_THROUGHPUT_TARGET}× the FastAPI peer's",
                          f"{ratio:.2f}×", ratio >= API_THROUGHPUT_TARGET))
            ratio = ours["p99_ms"] / peer["p99_ms"]
            found.append((f"{at}: p99 ≤ {API_P99_TARGET}× the FastAPI peer's",
                          f"{ours['p99_ms']:.1f} / {peer['p99_ms']:.1f} ms = {ratio:.2f}×",
                          ratio <= API_P99_TARGET))
        if ours.get("connections", 32) == 32:
            found.append((f"{at}: p99 < 20 ms", f"{ours['p99_ms']:.1f} ms",
                          ours["p99_ms"] < 20))
    return found


def _baseline_pairs(results: dict) -> list[tuple[dict, dict]]:
    """Each round's (this checkout's row, the baseline's row) of the before/after runs."""
    rows = results.get("baseline") or []
    pairs = []
    for number in sorted({r["round"] for r in rows}):
        mine = [r for r in rows if r["round"] == number]
        ours = _find(mine, PROJECT)
        theirs = next((r for r in mine if r["contender"].startswith("baseline ")), None)
        if ours and theirs and ours["orders_per_s"] and theirs["orders_per_s"]:
            pairs.append((ours, theirs))
    return pairs


def baseline_targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """This checkout's ingest against the baseline commit's: the median of the rounds' ratios."""
    pairs = _baseline_pairs(results)
    if not pairs:
        return []
    commit = pairs[0][1]["contender"].removeprefix("baseline ")
    speed = [ours["orders_per_s"] / theirs["orders_per_s"] for ours, theirs in pairs]
    found = [(f"orders/s at 0 ms ≥ 0.97× baseline {commit}",
              f"{_median(speed):.2f}× (rounds: " + ", ".join(f"{v:.2f}" for v in speed) + ")",
              _median(speed) >= 0.97)]
    cpu = [theirs["cpu_ms_per_order"] / ours["cpu_ms_per_order"] for ours, theirs in pairs
           if ours.get("cpu_ms_per_order") and theirs.get("cpu_ms_per_order")]
    if cpu:
        found.append((f"worker CPU per order, baseline {commit} over this checkout",
                      f"{_median(cpu):.2f}× (rounds: " + ", ".join(f"{v:.2f}" for v in cpu)
                      + ")", None))
    return found


def _baseline(results: dict) -> list[str]:
    pairs = _baseline_pairs(results)
    if not pairs:
        return []
    commit = pairs[0][1]["contender"].removeprefix("baseline ")
    lines = ["", f"### Before and after: this checkout against {commit}, 0 ms, interleaved "
             "(orders/s; after the first order in brackets)", ""]
    return lines + _table(
        ["round", "this checkout", commit, "ratio", f"CPU ms per order, this · {commit}"],
        "rrrrr", ([str(number), f"{_n(ours['orders_per_s'])} ({_n(ours['steady_per_s'])})",
                   f"{_n(theirs['orders_per_s'])} ({_n(theirs['steady_per_s'])})",
                   f"{ours['orders_per_s'] / theirs['orders_per_s']:.2f}×",
                   f"{_n(ours.get('cpu_ms_per_order'), 2)} · "
                   f"{_n(theirs.get('cpu_ms_per_order'), 2)}"]
                  for number, (ours, theirs) in enumerate(pairs, 1)))


def _targets(results: dict) -> list[str]:
    lines = []
    for subject, found in (("Ingest and API", targets(results)),
                           ("Round-trip and scale-out", latency_targets(results)),
                           ("Before and after", baseline_targets(results)),
                           ("Live page", dashboard_targets(results.get("dashboard_cost"))),
                           ("Batch files", files_targets(results.get("files")))):
        if not found:
            continue
        lines += ["", f"### {subject} targets, from this run's figures", ""]
        lines += _table(["target", "this run", "met"], "lrl",
                        ([name, value, "–" if met is None else "yes" if met else "**no**"]
                         for name, value, met in found))
    return lines


def _durability(results: dict) -> list[str]:
    rows = results["durability"]
    base = rows[0]["orders_per_s"] or 1
    lines = ["", "### Durability: the project's ingest at each level of the aggregates' Redis",
             ""]
    return lines + _table(
        ["Redis", "orders/s", "× the first row", "Redis round trips per order",
         "CPU % of a core: SQS server · contender · Redis · proxy", "check"], "lrrrll",
        ([r["level"], _n(r["orders_per_s"]), f"{r['orders_per_s'] / base:.2f}×",
          _per(r["redis_round_trips"], r["done"] or r["orders"]),
          _busy(r["cpu_busy"], ("sqs", "contender", "redis", "proxy")), _check(r)]
         for r in rows))


def _cluster(results: dict) -> list[str]:
    rows = results["cluster"]
    base = rows[0]["orders_per_s"] or 1

    def cells(r: dict) -> list[str]:
        orders = r["done"] or r["orders"]
        return [r["contender"].removeprefix("this project, "), _n(r["orders_per_s"]),
                f"{r['orders_per_s'] / base:.2f}×", _per(r["redis_round_trips"], orders),
                _per(sum(r["redis_commands"].values()), orders),
                _busy(r["cpu_busy"], ("sqs", "contender", "redis")), _check(r)]

    lines = ["", "### Redis Cluster: the project's ingest on one Redis and on a cluster", ""]
    return lines + _table(
        ["Redis", "orders/s", "× one Redis", "Redis round trips per order (all primaries)",
         "Redis commands per order", "CPU % of a core: SQS server · contender · Redis", "check"],
        "lrrrrll", map(cells, rows))


# Cost per order as worker processes are added: each figure at most this × one process's.
SCALE_OUT_MOST = 1.1
# (key, what it is) of the costs per order compared across worker counts: each measured
# over the steady part of the run (no start-up), the whole run's beside it.
SCALE_OUT_COSTS = (("cpu", "worker CPU ms per order"), ("sqs", "SQS requests per order"),
                   ("redis", "Redis round trips per order"))


def cost_per_order(row: dict, steady: bool = True) -> dict[str, float | None]:
    """A row's worker CPU ms, SQS requests and Redis round trips per order: over the steady
    part of its run (None if it had none), or over the whole run."""
    if steady:
        part = row.get("steady") or {}
        return {"cpu": part.get("cpu_ms_per_order"), "sqs": part.get("sqs_requests_per_order"),
                "redis": part.get("redis_round_trips_per_order")}
    done = row["done"]
    return {"cpu": row.get("cpu_ms_per_order"),
            "sqs": sum(row["sqs_requests"].values()) / done if done else None,
            "redis": row["redis_round_trips"] / done if done else None}


def scale_out_ratios(rows: list[dict], far: float,
                     steady: bool = True) -> dict[tuple[str, int], float]:
    """{(cost key, worker processes): that cost per order over one process's}, at far ms."""
    one = _find(rows, PROJECT, far)
    if one is None:
        return {}
    base = cost_per_order(one, steady)
    ratios = {}
    for row in rows:
        if row["contender"] == PROJECT and row.get("rtt_ms", 0) == far \
                and row.get("processes", 1) > 1:
            for key, value in cost_per_order(row, steady).items():
                if value and base[key]:
                    ratios[(key, row["processes"])] = value / base[key]
    return ratios


def _measured_together(results: dict) -> list[list[dict]]:
    """The groups of rows measured side by side: each round, or else the main rows."""
    rounds = results.get("rounds") or []
    numbers = sorted({r["round"] for r in rounds})
    return [[r for r in rounds if r["round"] == n] for n in numbers] or [results["ingest"]]


def scale_out_targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Cost per order at 2 and 4 worker processes against one's: (target, measured, met).

    The steady part of each run is the target; the whole run's ratio, start-ups included,
    is shown beside it. With rounds, each ratio is the median of the rounds' own ratios.
    """
    groups = _measured_together(results)
    far = _far([row for group in groups for row in group])
    steady = [scale_out_ratios(group, far) for group in groups]
    whole = [scale_out_ratios(group, far, steady=False) for group in groups]
    found = []
    for processes in sorted({n for ratios in steady + whole for _, n in ratios}):
        for key, text in SCALE_OUT_COSTS:
            values = [ratios[(key, processes)] for ratios in steady
                      if (key, processes) in ratios]
            overall = [ratios[(key, processes)] for ratios in whole
                       if (key, processes) in ratios]
            if not values and not overall:
                continue
            shown = _ratios(values) + (f"; whole run {_ratios(overall)}" if overall else "")
            found.append((f"at {far:g} ms, {processes} worker processes: {text} "
                          f"≤ {SCALE_OUT_MOST:g}× one process's", shown,
                          _median(values) <= SCALE_OUT_MOST if values else False))
    return found


def _ratios(values: list[float]) -> str:
    """'1.04×', or with rounds '1.04× (median of 3 rounds: 1.02, 1.04, 1.09)'; '–' if none."""
    if not values:
        return "–"
    return f"{_median(values):.2f}×" + (f" (median of {len(values)} rounds: "
                                        + ", ".join(f"{v:.2f}" for v in values) + ")"
                                        if len(values) > 1 else "")


def _scale_out(results: dict) -> list[str]:
    groups = _measured_together(results)
    far = _far([row for group in groups for row in group])
    lines = ["", f"### Scale-out: cost per order with more worker processes, at {far:g} ms",
             "", "Worker CPU is every process of the workers (main and pool) from /proc. Each "
             f"figure is over the steady part of the run, from {STEADY_FROM:.0%} to "
             f"{STEADY_TO:.0%} of its orders (no process's start-up), the whole run's after "
             "the ·; ratios are to one process in the same round.", ""]

    def cells(group: list[dict]):
        ratios = scale_out_ratios(group, far)
        rows = sorted((r for r in group if r["contender"] == PROJECT
                       and r.get("rtt_ms", 0) == far), key=lambda r: r.get("processes", 1))
        for r in rows:
            n, steady, whole = r.get("processes", 1), cost_per_order(r), cost_per_order(r, False)
            times = " · ".join(f"{ratios[(key, n)]:.2f}" if (key, n) in ratios else "–"
                               for key, _ in SCALE_OUT_COSTS) if n > 1 else "1 · 1 · 1"
            yield [str(r.get("round", "main")), str(n), _n(r["orders_per_s"]),
                   *(f"{_n(steady[key], 3)} · {_n(whole[key], 3)}" for key, _ in SCALE_OUT_COSTS),
                   _per(r["control_round_trips"], r["done"]), times]

    return lines + _table(
        ["round", "worker processes", "orders/s", "worker CPU ms per order",
         "SQS requests per order", "Redis round trips per order",
         "control-plane round trips per order (whole run)",
         "steady × one process: CPU · SQS · Redis"], "lrrrrrrr",
        (row for group in groups for row in cells(group)))


# Worker cores and Redis shards are planned this busy at the rate asked: 30% headroom for
# peaks, a backlog to catch up on, and one machine or shard of the set being down for a while.
PLAN_BUSY = 0.7
PLAN_RATES = (1_000, 10_000)  # orders/s of the capacity table
# Non-batched requests a second per API action of a FIFO queue (not high-throughput mode).
FIFO_TPS = 300


def capacity_rows(results: dict) -> list[dict]:
    """Per contender at 0 ms: SQS requests and their cost, worker CPU, cores and Redis shards
    needed at PLAN_RATES, from this run's figures."""
    settings = results["settings"]
    price = settings["sqs_price_per_million"]
    cluster = next((r for r in results.get("cluster") or []
                    if r.get("redis_nodes", 1) > 1 and r.get("redis_cpu_ms_per_order")), None)
    found = []
    for r in results["ingest"]:
        if r.get("rtt_ms", 0) or r.get("processes", 1) > 1 or "no proxy" in r["contender"] \
                or not r["done"]:
            continue
        steady_cpu = cost_per_order(r)["cpu"]
        cpu_ms = steady_cpu or r.get("cpu_ms_per_order")
        sqs = sum(r["sqs_requests"].values()) / r["done"]
        # The raw drain has no Redis work: the harness's own commands are not counted.
        redis_ms = r.get("redis_cpu_ms_per_order") if r["redis_round_trips"] else None
        row = {"contender": r["contender"], "time_boxed": r["status"] != "ok",
               "steady": bool(steady_cpu),
               "sqs_per_million": sqs * 1e6, "dollars_per_million": sqs * price,
               "cpu_s_per_million": cpu_ms * 1000 if cpu_ms else None,
               "redis_cpu_ms_per_order": redis_ms,
               "redis_commands_per_order": sum(r["redis_commands"].values()) / r["done"],
               "sqs_per_action": {action: count / r["done"]
                                  for action, count in r["sqs_requests"].items()},
               "cores": {}, "shards": {}, "cluster_shards": set()}
        for rate in PLAN_RATES:
            if cpu_ms:
                row["cores"][rate] = cpu_ms / 1000 * rate / PLAN_BUSY
            if redis_ms:
                shards = rate * redis_ms / 1000 / PLAN_BUSY
                # Beyond one shard the project's batches span primaries: a cluster's cost.
                if shards > 1 and cluster and r["contender"] == PROJECT:
                    shards = rate * cluster["redis_cpu_ms_per_order"] / 1000 / PLAN_BUSY
                    row["cluster_shards"].add(rate)
                row["shards"][rate] = shards
        found.append(row)
    return found


def _whole(value: float | None) -> str:
    """What to provision (rounded up) with the exact need beside it: '2 (1.4)'."""
    return "–" if value is None else f"{max(1, math.ceil(value)):,} ({value:,.1f})"


def _capacity(results: dict) -> list[str]:
    settings = results["settings"]
    price, date = settings["sqs_price_per_million"], settings["sqs_price_date"]
    rows = capacity_rows(results)
    rates = " · ".join(f"{rate:,}" for rate in PLAN_RATES)
    lines = ["", "### Capacity and cost, from this run's figures at 0 ms", "",
             f"SQS at ${price:.2f} per million requests (the list price read {date}; the "
             "consumer's requests only); worker CPU from the steady part of each run († the "
             f"whole run, where it has none); cores and shards planned {PLAN_BUSY:.0%} busy, "
             "the exact need in brackets; a Redis shard is one redis-server core, so it "
             "serves 1 / (its CPU per order) orders a second.", ""]
    lines += _table(
        ["contender", "SQS requests per million orders", "SQS cost per million orders",
         "worker CPU s per million orders", f"worker cores at {rates} orders/s",
         "Redis CPU ms per order", f"Redis shards at {rates} orders/s"], "lrrrlrl",
        ([row["contender"] + (" (time-boxed)" if row["time_boxed"] else ""),
          _n(row["sqs_per_million"]), f"${row['dollars_per_million']:.2f}",
          _n(row["cpu_s_per_million"]) + ("" if row["steady"] else " †"),
          " · ".join(_whole(row["cores"].get(rate)) for rate in PLAN_RATES),
          _n(row["redis_cpu_ms_per_order"], 4),
          " · ".join(_whole(row["shards"].get(rate))
                     + (" ‡" if rate in row["cluster_shards"] else "") for rate in PLAN_RATES)]
         for row in rows))
    project = next((row for row in rows if row["contender"] == PROJECT), None)
    if project and project["redis_cpu_ms_per_order"]:
        per_shard = 1000 / project["redis_cpu_ms_per_order"]
        lines += ["", f"One Redis shard at 100% of its core: {_n(per_shard)} of the project's "
                  f"orders a second, {_n(per_shard * project['redis_commands_per_order'])} "
                  "commands a second (Lua's included)."
                  + (" ‡: beyond one shard, the Redis Cluster row's CPU per order (all its "
                     "primaries): a batch's keys span primaries." if project["cluster_shards"]
                     else "")]
    if project and project["sqs_per_action"]:
        busiest = max(project["sqs_per_action"].values())
        top = max(PLAN_RATES)
        lines += ["", f"SQS per queue at {top:,} orders/s: the project makes "
                  f"{_n(busiest * top)} requests a second of its busiest action; a standard "
                  "queue takes a nearly unlimited number, a FIFO queue "
                  f"{FIFO_TPS} per action (high-throughput mode more): "
                  f"{_n(FIFO_TPS / busiest)} orders/s there."]
    return lines


def markdown(results: dict) -> str:
    """The whole table: header, ingest, API, scale and targets."""
    lines = _header(results) + (_ingest(results) if results.get("ingest") else [])
    if results.get("rounds"):
        lines += _rounds(results)
    if any(r.get("processes", 1) > 1 for r in results["ingest"] + (results.get("rounds") or [])):
        lines += _scale_out(results)
    lines += _baseline(results)
    if results.get("api"):
        lines += _api(results)
    if results.get("dashboard_cost"):
        lines += _dashboard_cost(results)
    if results.get("scale"):
        lines += _scale(results)
    if results.get("durability"):
        lines += _durability(results)
    if results.get("cluster"):
        lines += _cluster(results)
    if "sqs_price_per_million" in results["settings"] and results.get("ingest"):
        lines += _capacity(results)
    if results.get("files"):
        lines += ["### Batch files", "", files_markdown(results["files"])]
    if results.get("range_queries"):
        lines += ["### Range rankings: no query blocks the store", "",
                  range_markdown(results["range_queries"])]
    lines += _targets(results)
    return "\n".join(lines) + "\n"
