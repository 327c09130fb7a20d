"""bench.run's --parts: an unknown part stops the run before any server starts."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_part_is_refused_with_the_known_ones(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.run", "--parts", "files,nope",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert "--parts: choose among ingest, files, range, not 'files,nope'" in run.stderr
    assert not (tmp_path / "logs").exists()  # nothing started
