"""Ctrl-C while waiting: the wait stops promptly with KeyboardInterrupt, and what it waited for is
left in a clean state."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest

import consort


@pytest.fixture(autouse=True)
def python_handles_sigint():
    """Python raises KeyboardInterrupt on SIGINT only if it installed its handler at start, which it
    skips when SIGINT was ignored then (a command started in the background by a non-interactive
    shell, as CI may run us). A terminal or a notebook kernel has the handler; install it here."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def big(n: int, offset: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"k{i}" for i in range(offset, offset + n)]})


def test_ctrl_c_stops_an_in_process_join():
    left, right = big(300_000, 0), big(300_000, 150_000)
    started = time.monotonic()
    timer = interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        consort.intersect(left, right, key="id", protocol="ecdh")  # ~10 s of curve work here
    timer.cancel()
    assert time.monotonic() - started < 3, "the wait noticed the signal within a few wake-ups"
    # The process is still usable: a new join runs normally.
    got, _ = consort.intersect(big(10, 0), big(10, 5), key="id")
    assert len(got) == 5


def test_ctrl_c_stops_waiting_for_a_node_job_which_runs_on(pair):
    pair.a.add_dataset("slow-a", big(100_000, 0), key="id", grant="partner", replace=True)
    pair.b.add_dataset("slow-b", big(100_000, 50_000), key="id", grant="bank", replace=True)
    timer = interrupt_after(0.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as err:
        pair.a.psi(peer="partner", dataset="slow-a", peer_dataset="slow-b", protocol="ecdh", progress=False)
    timer.cancel()
    assert time.monotonic() - started < 3
    job_id = pair.a.jobs()[-1]["job_id"]
    assert job_id in str(err.value) and "runs on" in str(err.value)
    assert pair.a.wait(job_id, progress=False)["state"] == "done"
