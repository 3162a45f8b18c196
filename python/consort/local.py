"""Two consort nodes on loopback, in a temporary directory: to try the package in a notebook, and
for the tests and examples. Each node is a real ``consort node`` process (mutual TLS gRPC on
127.0.0.1, pinned certificates), set up with the ``consort`` command line as an operator would.

The ``consort`` binary is found by :func:`find_binary`: ``$CONSORT_BIN``, else ``consort`` on
``PATH``, else ``release/consort`` under ``$CARGO_TARGET_DIR`` or under ``target/`` of the current
directory or one of its parents (a checkout after ``cargo build --release -p consort-node``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from .errors import Error
from .node import Node

PathLike = Union[str, "os.PathLike[str]"]


def find_binary() -> Path:
    """The ``consort`` executable (see the module's docstring for where it is looked for)."""
    env = os.environ.get("CONSORT_BIN")
    if env:
        return Path(env)
    on_path = shutil.which("consort")
    if on_path:
        return Path(on_path)
    candidates: List[Path] = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "consort")
    here = Path.cwd()
    candidates += [p / "target" / "release" / "consort" for p in (here, *here.parents)]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise Error(
        "cannot find the consort binary: set CONSORT_BIN, put consort on PATH, or run from the "
        "repository after `cargo build --release -p consort-node`"
    )


class LocalPair:
    """Two nodes (``names``, default ``bank`` and ``partner``) pinned to each other, running in
    ``root`` (default: a new temporary directory, removed by :meth:`stop`).

    Use as a context manager::

        with consort.local.LocalPair() as pair:
            pair.a.add_dataset("customers", df_a, key="id", grant="partner")
            pair.b.add_dataset("accounts", df_b, key="id", grant="bank")
            rows = pair.a.psi(peer="partner", dataset="customers", peer_dataset="accounts")
    """

    def __init__(
        self,
        root: Optional[PathLike] = None,
        names: Tuple[str, str] = ("bank", "partner"),
        binary: Optional[PathLike] = None,
    ):
        self.binary = Path(binary) if binary is not None else find_binary()
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="consort-pair-")
        self.root = Path(root if root is not None else self._tmp.name).absolute()  # type: ignore[union-attr]
        self.names = names
        self.dirs = (self.root / names[0], self.root / names[1])
        self._procs: List[subprocess.Popen] = []
        self.a: Node
        self.b: Node

    def cli(self, *args: Union[PathLike, int], check: bool = True) -> subprocess.CompletedProcess:
        """Runs ``consort ARGS`` and returns the completed process (output captured as text)."""
        words = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
        run = subprocess.run([str(self.binary), *words], capture_output=True, text=True)
        if check and run.returncode != 0:
            raise Error(f"consort {' '.join(words)}: {run.stderr.strip()}")
        return run

    def start(self, timeout: float = 30.0) -> "LocalPair":
        """Creates both node directories, starts both nodes and pins each to the other."""
        for name, d in zip(self.names, self.dirs):
            self.cli("init", d, "--name", name, "--listen", "127.0.0.1:0")
        for d in self.dirs:
            log = open(d / "node.log", "wb")
            env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
            self._procs.append(
                subprocess.Popen([str(self.binary), "node", str(d)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=log, env=env)
            )
            log.close()
        addrs = [self._wait_ready(p, d, timeout) for p, d in zip(self._procs, self.dirs)]
        for (me, other), addr in (((0, 1), addrs[1]), ((1, 0), addrs[0])):
            self.cli("peer", "add", self.dirs[me], "--name", self.names[other], "--addr", addr,
                     "--cert", self.dirs[other] / "node.crt")
        self.a, self.b = Node(self.dirs[0]), Node(self.dirs[1])
        return self

    def _wait_ready(self, proc: subprocess.Popen, d: Path, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Error(f"node {d} exited ({proc.returncode}); see {d / 'node.log'}")
            addr_file = d / "listen.addr"
            if addr_file.exists() and (d / "control.sock").exists():
                addr = addr_file.read_text().strip()
                if addr:
                    return addr
            time.sleep(0.05)
        raise Error(f"node {d} did not start within {timeout:.0f} s; see {d / 'node.log'}")

    def stop(self) -> None:
        """Stops both nodes (SIGTERM, then SIGKILL after 10 s) and removes a temporary root."""
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "LocalPair":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def audit_key(self, which: int) -> str:
        """Node ``which``'s (0 or 1) audit public key (hex), as ``consort audit key`` prints it."""
        return self.cli("audit", "key", self.dirs[which]).stdout.strip()

    def audit_export(self, which: int, job_id: str, out: PathLike) -> Path:
        """Exports node ``which``'s evidence bundle of a job (``consort audit export``)."""
        self.cli("audit", "export", self.dirs[which], "--job", job_id, "--out", out)
        return Path(out)


__all__: Sequence[str] = ["LocalPair", "find_binary"]
