"""/metrics counts the live workers from their heartbeats on the control plane."""
import socket
from dataclasses import replace

import requests

from conftest import free_port, wait_for
from test_metrics import samples


def scrape(api: str) -> dict:
    response = requests.get(f"{api}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text)


def test_a_worker_is_up_while_its_heartbeats_arrive_and_down_once_it_stops(
        settings, start_worker, api_server):
    hostname = f"w1@{socket.gethostname()}"
    up = ("orders_worker_up", (("worker", hostname),))
    live = ("orders_workers_live", ())
    control_plane = ("orders_dependency_up", (("dependency", "control_plane"),))

    # No worker yet: once the API has listened for two heartbeat intervals, none is live.
    found = wait_for(lambda: (f := scrape(api_server)).get(live) is not None and f,
                     timeout=30, message="orders_workers_live")
    assert found[live] == 0 and found[control_plane] == 1
    assert up not in found

    worker = start_worker()
    # Each scrape lands on either API process: one that has listened long enough to count.
    found = wait_for(lambda: (f := scrape(api_server)).get(up) == 1 and live in f and f,
                     timeout=30, message="the worker's heartbeat in /metrics")
    assert found[live] == 1
    assert 0 <= found[("orders_worker_heartbeat_age_seconds", (("worker", hostname),))] < 4

    worker.stop()
    # Its worker-offline event, or two missed heartbeats, make it down.
    found = wait_for(lambda: (f := scrape(api_server)).get(up) == 0 and live in f and f,
                     timeout=30, message="the stopped worker down in /metrics")
    assert found[live] == 0 and found[control_plane] == 1


def test_an_unreachable_control_plane_is_a_dependency_down_not_zero_workers(
        settings, start_api):
    api = start_api(replace(settings, control_url=f"redis://127.0.0.1:{free_port()}/0"))
    control_plane = ("orders_dependency_up", (("dependency", "control_plane"),))
    found = wait_for(lambda: (f := scrape(api)).get(control_plane) is not None and f,
                     timeout=30, message="the control plane's state")
    assert found[control_plane] == 0
    assert ("orders_workers_live", ()) not in found
