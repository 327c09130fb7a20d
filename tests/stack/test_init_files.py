"""`python -m stack.init_files` when its endpoint does not answer."""
import os
import subprocess
import sys

from conftest import ROOT, free_port


def test_an_endpoint_that_does_not_answer_is_named_on_one_line():
    port = free_port()  # nothing listens there
    env = {**os.environ, "SQS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FILES_ENDPOINT_URL": ""}
    ran = subprocess.run([sys.executable, "-m", "stack.init_files"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    assert ran.stderr.startswith(f"S3, SQS and SNS at http://127.0.0.1:{port}: Could not connect")
    assert len(ran.stderr.splitlines()) == 1
