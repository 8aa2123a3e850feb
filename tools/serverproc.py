"""Start `esenv serve` as a real process, the way a user (or NeMo Gym's launcher) would."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType


class ServerProcess:
    """A running `python -m eventsourced_env serve ENV` on a loopback port (a free one by default)."""

    def __init__(self, env: str, db: Path, *extra: str, port: int = 0, open_files: int | None = None) -> None:
        """`open_files`: start it with this soft limit on open files (as a shell's `ulimit -Sn`)."""

        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(
                    resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
                )

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eventsourced_env",
                "serve",
                env,
                "--db",
                str(db),
                "--port",
                str(port),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit if open_files is not None else None,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(
                f"server did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.url = line

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, and wait for a clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
