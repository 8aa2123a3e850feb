"""Working through a log file's sessions on every core: replay and re-verify, split by session.

Sessions are independent of one another, so checking a log is embarrassingly parallel.
`map_sessions` cuts the list of sessions to visit into chunks, in order, and runs `work(view,
chunk)` on each: in this process when `jobs` is 1 (or there is only one chunk), else in `jobs`
forked worker processes, each reading through a read-only `Snapshot` of its own. Results come back
in the listed order either way, so a report is the same whatever `jobs` is.

Each worker's snapshot is pinned when it first reads. On a log that a server is still appending
to, a session may therefore be read a few events longer than it was when the list was made: still
a whole prefix of its log, which is all that replay and re-verify check.

Sits on top, beside `cli` (which it serves); imports `replay` and `snapshot`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from .environment import Performer
from .errors import EnvError, LogCorrupt
from .events import Event
from .replay import Divergence, Resolver, ReverifyReport, replay_logs, reverify_logs
from .snapshot import Snapshot

__all__ = ["CHUNK", "default_jobs", "map_sessions", "replay_file", "reverify_file"]

R = TypeVar("R")
Work = Callable[[Snapshot, list[str]], R]

#: Sessions per chunk: big enough that handing a chunk to a worker costs nothing next to replaying
#: it, small enough that the workers finish together and a progress bar moves.
CHUNK = 256


def default_jobs() -> int:
    """One worker per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# The worker process's read-only view and its work, set once when the worker starts.
_worker: tuple[Snapshot, Work[Any]] | None = None


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold SIGINT while processes are forked in the block: they are born with it held (and the pool's
    thread too); a worker ignores it, then lets it through
    (`_start_worker`). Ctrl-C reaches the whole process group, and the parent, not each worker,
    answers it by stopping the pool. Ignored only once a worker had started, a Ctrl-C just after
    the fork hit a worker still starting up: a traceback, and a replacement worker left behind. The
    parent gets a Ctrl-C held meanwhile as the block ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _start_worker(db: Path, work: Work[Any]) -> None:
    global _worker
    # Stopped by its pool with SIGTERM: go quietly, whatever handler the parent had. Deaf to Ctrl-C,
    # which the parent answers (see `_ctrl_c_held`): ignored, then no longer held.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _worker = (Snapshot(db), work)


def _run_chunk(chunk: list[str]) -> Any:
    assert _worker is not None, "runs in a worker started by map_sessions"
    view, work = _worker
    return work(view, chunk)


def map_sessions(
    db: str | Path,
    ids: Sequence[str],
    work: Work[R],
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """`work(view, chunk)` for each chunk of `ids` in order, on `jobs` processes; each chunk's result.

    `progress(n)` is called as each chunk of n sessions is done. Worker processes are forked, so
    `work` may be a closure over anything already loaded (environments, resolvers).
    """
    path = Path(db)
    chunks = [list(ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]
    jobs = min(jobs, len(chunks))
    if jobs <= 1:
        with Snapshot(path) as view:
            for chunk in chunks:
                result = work(view, chunk)
                if progress is not None:
                    progress(len(chunk))
                yield result
        return
    # Fork: the workers inherit `work` and what it closes over, nothing is pickled but the ids. A
    # ProcessPoolExecutor, not a multiprocessing.Pool: a Pool's thread forks a replacement for a
    # worker that exits, also while `terminate()` stops them, and then waits forever on the one it
    # made too late (a Ctrl-C left the command and a worker hanging, one run in a few under load).
    # An executor makes its workers once; stopped, it lets the chunks in hand finish, drops the rest.
    with contextlib.ExitStack() as stack:
        with _ctrl_c_held():  # a Ctrl-C held meanwhile arrives as this ends: the pool is on the stack
            pool = ProcessPoolExecutor(
                jobs, multiprocessing.get_context("fork"), initializer=_start_worker, initargs=(path, work)
            )
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            results = pool.map(_run_chunk, chunks)  # every chunk handed over: the workers fork here
        try:
            for chunk, result in zip(chunks, results, strict=True):
                if progress is not None:
                    progress(len(chunk))
                yield result
        except BrokenProcessPool as e:  # a worker killed (by the system running out of memory…)
            raise ChildProcessError(
                f"a worker process died before its work was done ({e}); nothing it was checking is "
                "reported. Run again, or with --jobs 1"
            ) from e


def _readable(
    view: Snapshot, chunk: list[str], unreadable: dict[str, Divergence]
) -> Iterator[tuple[str, list[Event]]]:
    """Each session of `chunk` with its events; one whose log cannot be read (an event edited into
    something that is not an event) goes into `unreadable` instead, so the others are still checked."""
    for session in chunk:
        try:
            events = view.events(session)
        except LogCorrupt as e:
            unreadable[session] = Divergence(session, e.seq, f"stored event is not an event ({e.reason})")
        except EnvError as e:
            unreadable[session] = Divergence(session, 1, f"its log cannot be read: {e.detail}")
        else:
            yield session, events


def replay_file(
    db: str | Path,
    ids: Sequence[str],
    resolve: Resolver,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, Divergence | None]]:
    """Replay the sessions `ids` of the log at `db`: each session and its first divergence (or None).

    Stored state snapshots are checked too. An id the log does not have is a divergence.
    """

    def work(view: Snapshot, chunk: list[str]) -> list[tuple[str, Divergence | None]]:
        unreadable: dict[str, Divergence] = {}
        # Each session is checked as soon as it is read: one session's events are alive at a time.
        # (Reading a whole chunk first kept 256 sessions' events alive, which the garbage
        # collector's passes scanned again and again; see the README's "What moved replay".)
        replayed = dict(replay_logs(_readable(view, chunk, unreadable), resolve, view.snapshots))
        return [(session, unreadable.get(session) or replayed[session]) for session in chunk]

    for part in map_sessions(db, ids, work, jobs, progress):
        yield from part


def reverify_file(
    db: str | Path,
    ids: Sequence[str],
    resolve: Resolver,
    performers: Mapping[str, Performer] | None = None,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
) -> ReverifyReport:
    """Re-verify the verified sessions among `ids` of the log at `db` (see `reverify_logs`).

    With `performers` (re-judging: live clients, not to be forked) it runs in this process only,
    `threads` sessions at a time (a judge's calls in flight: each waits on the judge).
    """

    def work(view: Snapshot, chunk: list[str]) -> ReverifyReport:
        unreadable: dict[str, Divergence] = {}
        logs = _readable(view, chunk, unreadable)
        if threads <= 1:
            report = reverify_logs(logs, resolve, performers)
        else:  # read here (the view is this thread's), scored on the threads, reported in order
            pool = ThreadPoolExecutor(threads, thread_name_prefix="esenv-rejudge")
            try:
                parts = list(pool.map(lambda log: reverify_logs([log], resolve, performers), list(logs)))
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM): the sessions not begun are not judged at all, and the
                # caller closes its judge for those in flight (`with` waited for every one queued).
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
            report = ReverifyReport(
                [r for part in parts for r in part.results], [e for part in parts for e in part.errors]
            )
        report.errors.extend(unreadable.values())
        return report

    report = ReverifyReport([], [])
    for part in map_sessions(db, ids, work, 1 if performers is not None else jobs, progress):
        report.results.extend(part.results)
        report.errors.extend(part.errors)
    return report
