"""tools/loadgen.py's command line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_loadgen_against_no_server_reports_the_errors_rather_than_a_traceback() -> None:
    # The README's worked example starts the server with `&` and the load generator right after
    # it: a server not yet listening made every call fail, and the summary's percentiles of no
    # latencies raised IndexError, hiding the errors it was about to print.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    run = subprocess.run(
        [sys.executable, "tools/loadgen.py", "--url", f"http://127.0.0.1:{port}", "--rollouts", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert "3 rollouts, 0 calls" in run.stdout
    assert "3 errors" in run.stdout
    assert "ClientConnectorError" in run.stdout
    assert run.returncode == 1
