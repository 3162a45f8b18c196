"""PSI of 10^6 × 10^6 rows through Python (`Node.psi` to a DataFrame) against the same job through
the CLI (`consort psi ... --out FILE`), between the same two node processes on loopback.

    cargo build --release -p consort-node && pip install ./python
    python python/bench/psi_bench.py --rows 1000000 --protocol rr22 --repeat 3

Both sides use the same data (`consort gen psi`, half the ids shared), registered as files for
the CLI runs and as DataFrames (read from the same CSV) for the Python runs. Timed:
- cli: `consort psi` as a subprocess, from start to exit (its output stays sealed in a file);
- python: `node.psi(...)` from the call to the returned DataFrame (submit, wait, decrypt the
  output and parse it into pandas), on the DataFrame dataset;
- python_file: the same call on the file dataset the CLI uses (only the client differs).
Runs alternate (cli, python, python_file, cli, ...); the medians are compared (`ratio`: python
over cli). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv

from consort.local import LocalPair


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--protocol", default="rr22", choices=["ecdh", "rr22"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where to keep the generated data (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="consort-bench-") as tmp:
        root = args.dir or Path(tmp)
        data = root / f"data-{args.rows}"
        with LocalPair(Path(tmp) / "nodes") as pair:
            if not (data / "a.csv").exists():
                pair.cli("gen", "psi", "--rows", args.rows, "--overlap", args.rows // 2, "--out", data)
            # The CLI's datasets: the files.
            pair.cli("dataset", "add", pair.dirs[0], "--name", "a-file", "--file", data / "a.csv", "--key", "id",
                     "--grant", pair.names[1])
            pair.cli("dataset", "add", pair.dirs[1], "--name", "b", "--file", data / "b.csv", "--key", "id",
                     "--grant", pair.names[0])
            # Python's: a DataFrame of the same rows (ids as text, as the node reads them).
            frame = pacsv.read_csv(
                data / "a.csv", convert_options=pacsv.ConvertOptions(column_types={"id": "string"})
            ).to_pandas()
            started = time.perf_counter()
            pair.a.add_dataset("a-frame", frame, key="id", grant=pair.names[1])
            register_s = time.perf_counter() - started

            cli_s, py_s, py_file_s, rows = [], [], [], None
            for i in range(args.repeat):
                out = root / f"cli-out-{i}.csv"
                started = time.perf_counter()
                subprocess.run(
                    [str(pair.binary), "psi", str(pair.dirs[0]), "--peer", pair.names[1], "--dataset", "a-file",
                     "--peer-dataset", "b", "--protocol", args.protocol, "--out", str(out), "--json"],
                    check=True, capture_output=True,
                )
                cli_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                df = pair.a.psi(peer=pair.names[1], dataset="a-frame", peer_dataset="b", protocol=args.protocol,
                                progress=False)
                py_s.append(time.perf_counter() - started)
                rows = len(df)
                started = time.perf_counter()
                same = pair.a.psi(peer=pair.names[1], dataset="a-file", peer_dataset="b", protocol=args.protocol,
                                  progress=False)
                py_file_s.append(time.perf_counter() - started)
                assert len(same) == rows
                out.unlink(missing_ok=True)

    cli, py, py_file = statistics.median(cli_s), statistics.median(py_s), statistics.median(py_file_s)
    print(json.dumps({
        "n": args.rows, "protocol": args.protocol, "intersection": rows,
        "cli_s": [round(s, 3) for s in cli_s], "python_s": [round(s, 3) for s in py_s],
        "cli_median_s": round(cli, 3), "python_median_s": round(py, 3), "ratio": round(py / cli, 3),
        "python_file_s": [round(s, 3) for s in py_file_s], "python_file_median_s": round(py_file, 3),
        "ratio_file": round(py_file / cli, 3),
        "python_register_dataframe_s": round(register_s, 3),
    }))


if __name__ == "__main__":
    main()
