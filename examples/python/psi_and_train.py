"""Two consort nodes on loopback, driven from pandas: a private set intersection and a joint
logistic regression, both from DataFrames.

Run from the repository after building the node and installing the package:

    cargo build --release -p consort-node   # the `consort` binary, target/release/consort
    pip install ./python
    python examples/python/psi_and_train.py

The two nodes are real `consort node` processes (mutual TLS gRPC on 127.0.0.1) in a temporary
directory, started by `consort.local.LocalPair`, which finds the binary through $CONSORT_BIN, else
`consort` on PATH, else `release/consort` under $CARGO_TARGET_DIR or `target/` of the current
directory or a parent of it.
"""

import numpy as np
import pandas as pd

from consort.local import LocalPair


def make_data(rows: int = 5000, seed: int = 1):
    """A bank with labels and 3 features, a partner with 3 other features for 90% of the bank's
    customers plus 1000 of its own; the label follows a logistic model of all six."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"cust-{i:06d}" for i in range(rows + 1000)])
    a, b = rng.normal(size=(rows, 3)), rng.normal(size=(rows, 3))
    logit = a @ [1.0, -0.7, 0.4] + b @ [0.8, 0.5, -0.9]
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    bank = pd.DataFrame({"id": ids[:rows], "y": y, "a0": a[:, 0], "a1": a[:, 1], "a2": a[:, 2]})
    shared = rng.random(rows) < 0.9
    partner = pd.DataFrame({"id": ids[:rows][shared], "b0": b[shared, 0], "b1": b[shared, 1], "b2": b[shared, 2]})
    others = pd.DataFrame({"id": ids[rows:], **{f"b{i}": rng.normal(size=1000) for i in range(3)}})
    return bank, pd.concat([partner, others], ignore_index=True)


def main() -> None:
    bank_df, partner_df = make_data()
    with LocalPair() as pair:  # nodes "bank" (pair.a) and "partner" (pair.b)
        bank, partner = pair.a, pair.b
        bank.add_dataset("loans", bank_df, key="id", grant="partner:psi,train,score")
        partner.add_dataset("features", partner_df, key="id", grant="bank:psi,train,score")

        shared = bank.psi(peer="partner", dataset="loans", peer_dataset="features", protocol="rr22")
        print(f"PSI: {len(shared)} shared customers of {len(bank_df)} (bank) and {len(partner_df)} (partner)")
        print(shared.head())

        model = bank.train(
            peer="partner", dataset="loans", peer_dataset="features", label="y",
            epochs=5, batch_size=512, learning_rate=0.5, holdout=0.2,
        )
        print(f"joint model (job {model.job_id}): holdout AUC {model.auc:.4f}, KS {model.ks:.4f}")


if __name__ == "__main__":
    main()
