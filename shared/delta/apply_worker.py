"""Child process that applies a verified payload to a base file: `python -m shared.delta.apply_worker`.

bsdiff4 holds the GIL while it patches, so the agent never applies in its serving process.
The child re-checks the payload and base hashes it is given (the files could have changed
since the parent checked them), writes the target, fsyncs it, and prints one JSON line:
`{"size": ..., "sha256": ...}` (exit 0), or `{"reason": ..., "message": ...}` (exit 3 for a
rejection, 4 for anything unexpected).

With `--serve` the child stays up and applies one job per JSON line on its stdin
(`{"payload", "base", "out", "payload_sha256", "base_sha256"}`), answering each with one
JSON line as above, until its stdin closes. `ResidentApplyWorker` is the parent's side: the
agent starts it once, so an update does not pay for a Python start-up (about 0.4 s of CPU
on a small board, and the imports' page faults) while it serves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from shared.delta.payload import apply_payload, mapped_file
from shared.errors import ApplyFailedError, CorruptPatchError, InvalidInputError, UpdateRejectedError, WrongBaseError

EXIT_REJECTED = 3
EXIT_FAILED = 4
CHILD_PRIORITIES = ("normal", "low", "idle")


def apply_files(payload_path: str, base_path: str, out_path: str, *, payload_sha256: str | None, base_sha256: str | None) -> dict:
    with mapped_file(payload_path) as payload, mapped_file(base_path) as base:
        if payload_sha256 is not None and hashlib.sha256(payload).hexdigest() != payload_sha256:
            raise CorruptPatchError("payload file changed after it was verified")
        if base_sha256 is not None and (found := hashlib.sha256(base).hexdigest()) != base_sha256:
            raise WrongBaseError(f"base file {base_path} has SHA-256 {found[:16]}..., the patch needs {base_sha256[:16]}...")
        with open(out_path, "wb") as out:
            size, sha256 = apply_payload(payload, base, out)
            out.flush()
            os.fsync(out.fileno())
    return {"size": size, "sha256": sha256}


def _run_job(payload: str, base: str, out: str, payload_sha256: str | None, base_sha256: str | None) -> tuple[dict, int]:
    """One apply; (the JSON reply, the exit status a one-shot child would have)."""
    try:
        return apply_files(payload, base, out, payload_sha256=payload_sha256, base_sha256=base_sha256), 0
    except UpdateRejectedError as exc:
        return {"reason": exc.reason, "message": str(exc)}, EXIT_REJECTED
    except Exception as exc:
        return {"reason": "apply_failed", "message": f"{type(exc).__name__}: {exc}"}, EXIT_FAILED


def serve(stdin=None, stdout=None) -> int:
    """`--serve`: one job per line on stdin, one reply per line on stdout, until EOF."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    for line in stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            args = (str(job["payload"]), str(job["base"]), str(job["out"]), job.get("payload_sha256"), job.get("base_sha256"))
        except (ValueError, KeyError, TypeError) as exc:
            reply: dict = {"reason": "apply_failed", "message": f"bad job line: {type(exc).__name__}: {exc}"}
        else:
            reply, _ = _run_job(*args)
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
    return 0


def checked_priority(priority: str) -> str:
    if priority not in CHILD_PRIORITIES:
        raise InvalidInputError(f"priority {priority!r} is not one of {CHILD_PRIORITIES}")
    return priority


def lower_priority(pid: int, priority: str) -> None:
    """Lower a child's CPU priority so it takes only what serving leaves: `low` is nice 10,
    `idle` is Linux SCHED_IDLE (and nice 19), `normal` changes nothing. Set from the parent
    on the child's pid, never on a thread of the parent: a low-priority thread holding the
    GIL would stall the serving thread. Best effort: where not allowed, nothing changes."""
    checked_priority(priority)
    try:
        if priority in ("low", "idle"):
            os.setpriority(os.PRIO_PROCESS, pid, 19 if priority == "idle" else 10)
        if priority == "idle":
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, not allowed, or the child already exited
        pass


def worker_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `python -m shared.delta.apply_worker ARGS` with this checkout's
    `shared` first on the path."""
    import shared

    env = dict(os.environ)
    root = str(Path(shared.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return [sys.executable, "-m", "shared.delta.apply_worker", *args], env


class ResidentApplyWorker:
    """One long-lived `apply_worker --serve` child at `priority`, applying one payload at a time.

    It starts on `start()` (or the first `apply`), pays its imports once, and then waits on its
    stdin using no CPU. A child that dies or runs past a job's time limit is killed; that job
    fails with ApplyFailedError and the next `apply` starts a fresh child. Thread-safe: jobs
    are serialised. Its stderr goes to the parent's stderr (the daemon's log).
    """

    def __init__(self, priority: str = "idle") -> None:
        self.priority = checked_priority(priority)
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._buffer = b""
        self.started = 0
        """Children started so far (a restart after a crash or a time-out counts again)."""

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> "ResidentApplyWorker":
        with self._lock:
            self._ensure_started()
        return self

    def _ensure_started(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._discard()
        cmd, env = worker_command("--serve")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        lower_priority(self._proc.pid, self.priority)
        self._buffer = b""
        self.started += 1
        return self._proc

    def apply(self, payload_path: str | Path, base_path: str | Path, out_path: str | Path, *,
              payload_sha256: Optional[str] = None, base_sha256: Optional[str] = None,
              timeout_s: float) -> dict:
        """The child's reply for one job: `{"size", "sha256"}` or `{"reason", "message"}`.
        Raises ApplyFailedError when the child dies or does not answer within `timeout_s`."""
        job = {"payload": str(payload_path), "base": str(base_path), "out": str(out_path),
               "payload_sha256": payload_sha256, "base_sha256": base_sha256}
        with self._lock:
            proc = self._ensure_started()
            try:
                proc.stdin.write((json.dumps(job) + "\n").encode())
                proc.stdin.flush()
            except OSError:
                status = self._discard()
                raise ApplyFailedError(f"apply worker exited with status {status} before taking the job") from None
            line = self._read_line(proc, time.monotonic() + timeout_s)
            if line is None:
                timed_out = proc.poll() is None
                status = self._discard()
                if timed_out:
                    raise ApplyFailedError(f"applying the patch took longer than {timeout_s:g} s; worker killed")
                raise ApplyFailedError(f"apply worker exited with status {status} during the job")
            try:
                reply = json.loads(line)
            except ValueError:
                reply = None
            if not isinstance(reply, dict):
                self._discard()
                raise ApplyFailedError(f"apply worker answered nonsense: {line[:200]!r}")
            return reply

    def _read_line(self, proc: subprocess.Popen, deadline: float) -> Optional[str]:
        """The child's next stdout line, or None on EOF or at the deadline (still running)."""
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def _discard(self) -> Optional[int]:
        """Kill and reap the child, if any; its exit status (None when there was none)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return proc.wait()

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the child's stdin (it exits at EOF); kill it if it does not within `timeout_s`.
        A job still running is cut short: the child is killed and that job fails."""
        if not self._lock.acquire(timeout=0.0):
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()  # the running job reads EOF, fails as apply_failed and lets go of the lock
            self._lock.acquire()
        try:
            proc = self._proc
            if proc is None:
                return
            try:
                proc.stdin.close()
                proc.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._discard()
        finally:
            self._lock.release()

    def __enter__(self) -> "ResidentApplyWorker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.delta.apply_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="stay up: one JSON job per stdin line, until EOF")
    parser.add_argument("--payload")
    parser.add_argument("--base")
    parser.add_argument("--out")
    parser.add_argument("--payload-sha256")
    parser.add_argument("--base-sha256")
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    if not (args.payload and args.base and args.out):
        parser.error("--payload, --base and --out are required without --serve")
    reply, status = _run_job(args.payload, args.base, args.out, args.payload_sha256, args.base_sha256)
    print(json.dumps(reply), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
