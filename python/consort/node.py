"""``consort.Node``: drive a running consort node from Python."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _frames, _native
from .errors import DatasetError, JobFailed, JobRefused

if TYPE_CHECKING:
    import pandas as pd

PathLike = Union[str, "os.PathLike[str]"]
Data = Union[PathLike, "pd.DataFrame", Any]
Progress = Union[bool, Callable[[str, int, int], None]]

#: Where ``add_dataset`` writes a DataFrame's CSV, under the node directory.
DATASETS_DIR = "datasets"


#: The job kind of each ``model`` of :meth:`Node.train`, as the node records it.
_TRAIN_KINDS = {"lr": "train", "secureboost": "secureboost"}


@dataclass
class TrainResult:
    """A finished train job: this node's model file, and the engine's report.

    For logistic regression (``model="lr"``) the report has the holdout AUC and KS, the holdout
    loss per epoch and the features used. For SecureBoost (``model="secureboost"``) it has
    ``trees_run`` and ``trees_kept`` (fewer when early stopping dropped the last trees),
    ``stopped_early``, ``holdout_loss`` (one per tree), ``auc``, ``ks``, ``holdout_rows``,
    ``features`` and ``peer_features``, ``importance`` (a list of ``{"feature", "splits",
    "gain"}``; the peer's features appear as ``peer:K``), ``model_id``, and timings per tree.
    """

    job_id: str
    model: Path
    report: Dict[str, Any]
    status: Dict[str, Any] = field(repr=False)

    @property
    def model_kind(self) -> str:
        """``"lr"`` or ``"secureboost"``."""
        return "secureboost" if self.status.get("kind") == "secureboost" else "lr"

    @property
    def auc(self) -> Optional[float]:
        """Holdout AUC (label holder only)."""
        return self.report.get("auc")

    @property
    def ks(self) -> Optional[float]:
        """Holdout Kolmogorov–Smirnov statistic (label holder only)."""
        return self.report.get("ks")


class Node:
    """A client of the node running in ``dir`` (its control socket ``DIR/control.sock``).

    The Python process must run as the node's OS user (the socket is mode 0600). Raises
    :class:`consort.NodeUnavailable` if no node answers there.

    Jobs submitted here have this node as the requester. Each job method waits for the job to
    end, with a progress bar (tqdm, if installed) unless ``progress=False``; ``progress`` may
    also be a callable, called with ``(stage, done, total)`` for each stage the node reports
    (e.g. ``match``, ``secureboost setup``, ``tree 2/5 holdout loss 0.5739``) and as a stage's
    ``done`` advances. It raises :class:`consort.JobRefused` or :class:`consort.JobFailed` with
    the node's message if the job does not end ``done``. Ctrl-C stops the wait with
    ``KeyboardInterrupt``; the job itself runs on in the node (the control API has no cancel) and
    ``node.job(id)`` follows it.
    """

    def __init__(self, dir: PathLike):
        self._native = _native.NativeNode(os.fspath(dir))

    @property
    def dir(self) -> Path:
        """The node directory (absolute)."""
        return Path(self._native.dir)

    def __repr__(self) -> str:
        return f"consort.Node({str(self.dir)!r})"

    def info(self) -> Dict[str, Any]:
        """The node's name, peer-service address, pinned peers and dataset names."""
        return json.loads(self._native.info())

    def datasets(self) -> List[Dict[str, Any]]:
        """Registered datasets: name, file, keys, normalization and grants."""
        return json.loads(self._native.datasets())

    def add_dataset(
        self,
        name: str,
        data: Data,
        *,
        key: Union[str, Sequence[str]],
        grant: Union[str, Iterable[str]] = (),
        dedup: bool = False,
        case_fold: bool = False,
        trim: bool = True,
        replace: bool = False,
        check: bool = True,
    ) -> Dict[str, Any]:
        """Registers a dataset, as ``consort dataset add`` does (same checks, same config change;
        the node re-reads its config).

        ``data`` is a CSV file with a header (registered where it is), or a pandas DataFrame /
        pyarrow Table, written as CSV (mode 0600, without the index) to
        ``DIR/datasets/NAME-TIMESTAMP.csv`` — in plain text, like any dataset file; the node
        encrypts outputs, not inputs. ``key`` is a column or a list of columns (composite key);
        ``grant`` is ``"PEER"`` (PSI) or ``"PEER:psi,train,score"``, or a list of them. With
        ``check`` (default) the whole file is read now in constant memory, so a bad row is
        reported here (:class:`consort.DatasetError`, naming the line and column) rather than in
        a job; duplicate keys are found when a job runs (``dedup`` keeps the first row of each).

        Returns the columns and the rows (``duplicates_dropped`` is ``None``: not checked here).
        """
        keys = _frames.keys_list(key)
        grants = [grant] if isinstance(grant, str) else list(grant)
        written: Optional[Path] = None
        if isinstance(data, (str, os.PathLike)):
            file = Path(os.fspath(data)).absolute()
        else:
            table = _frames.to_table(data)
            folder = self.dir / DATASETS_DIR
            folder.mkdir(mode=0o700, exist_ok=True)
            # The node checks the name; the file name only has to be safe and unique.
            safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
            file = written = folder / f"{safe}-{time.time_ns()}.csv"
            _frames.write_csv(table, file)
        previous = {d["name"]: d["file"] for d in self.datasets()}.get(name)
        try:
            result = self._native.add_dataset(
                name, os.fspath(file), keys, grants, dedup, case_fold, trim, replace, check
            )
        except BaseException as e:
            if written is None:
                raise
            written.unlink(missing_ok=True)
            if isinstance(e, DatasetError):
                raise DatasetError(_frames.rename_file(str(e), written, f"DataFrame for dataset '{name}'")) from None
            raise
        if previous and written is not None and Path(previous).parent == written.parent and Path(previous) != written:
            # The replaced dataset's CSV was ours (written for a DataFrame): nothing refers to it.
            Path(previous).unlink(missing_ok=True)
        return json.loads(result)

    def psi(
        self,
        *,
        peer: str,
        dataset: str,
        peer_dataset: str,
        protocol: str = "ecdh",
        reveal: str = "both",
        out: Optional[PathLike] = None,
        progress: Progress = True,
    ) -> Union["pd.DataFrame", Path]:
        """Runs a private set intersection of this node's ``dataset`` with ``peer``'s
        ``peer_dataset`` (``protocol``: ``"ecdh"`` or ``"rr22"``; ``reveal``: ``"both"`` or
        ``"requester-only"``).

        Without ``out``: returns this node's rows of the intersection as a DataFrame, in the
        order both sides share (row ``i`` is the same entity on both sides); key columns are
        strings, the other columns' types are inferred. The node keeps its sealed copy under
        ``DIR/outputs``. With ``out``: the node writes them there (sealed under its storage key,
        as ``consort psi --out`` does) and the path is returned.
        """
        job_id = self._native.submit_psi(
            peer, dataset, peer_dataset, protocol, reveal, None if out is None else os.fspath(out)
        )
        status = self._finish(job_id, progress, "psi")
        if out is not None:
            return Path(status["output"])
        return self._read_frame(status["output"], self._keys(dataset))

    def train(
        self,
        *,
        peer: str,
        dataset: str,
        peer_dataset: str,
        label: str,
        features: Sequence[str] = (),
        protocol: str = "ecdh",
        model: str = "lr",
        out: Optional[PathLike] = None,
        progress: Progress = True,
        **params: Any,
    ) -> TrainResult:
        """Trains a joint model: this node holds ``label`` (0/1) and its ``features`` (default:
        every column but keys and label), the peer its own features.

        ``model="lr"`` (default) is a joint logistic regression (a ``train`` job);
        ``model="secureboost"`` gradient-boosted trees (a ``secureboost`` job, as
        ``consort train --model secureboost``). The peer's dataset must grant this node the job
        kind: ``train`` for LR, ``secureboost`` for SecureBoost (and ``score`` /
        ``secureboost-score`` to score with the model).

        ``params`` are the model's hyper-parameters, defaults the engine's:

        - LR: ``epochs``, ``batch_size``, ``learning_rate``, ``l2``, ``holdout``, ``tolerance``,
          ``feature_bits``, ``feature_frac_bits``, ``split_seed``, ``sigmoid``, ``dealer``.
        - SecureBoost: ``trees``, ``max_depth``, ``learning_rate``, ``max_bins``, ``reg_lambda``
          (the L2 penalty of leaf weights, the engine's ``lambda``: a Python keyword;
          ``**{"lambda": 1.0}`` works too), ``gamma``, ``min_child_weight``, ``subsample``,
          ``colsample``, ``tolerance``, ``holdout``, ``seed``, ``histograms`` (``"ot"`` or
          ``"he"``), ``hide_partitions`` (``True``: the peer never receives the partitions of
          this node's splits, so it learns no node's rows beyond its own splits'; ``"ot"``
          only, and slower: each histogram costs the peer's view of the node's rows).

        The seed of the holdout split (``split_seed`` / ``seed``) is drawn at random unless
        given. An unknown name, or the other model's parameter (``epochs`` with SecureBoost,
        ``trees`` with LR), raises :class:`consort.InvalidArgument`, as does a value out of
        bounds. The model is written (sealed) to ``out``, default
        ``DIR/outputs/model-DATASET-TIMESTAMP.json``; the peer writes its half under its own node
        directory.
        """
        target = Path(os.fspath(out)) if out is not None else self._default_out(f"model-{dataset}", "json")
        job_id = self._native.submit_train(
            peer, dataset, peer_dataset, label, list(features), protocol, model, json.dumps(params), os.fspath(target)
        )
        status = self._finish(job_id, progress, _TRAIN_KINDS.get(model, "train"))
        return TrainResult(job_id, Path(status["output"]), status.get("report") or {}, status)

    def score(
        self,
        *,
        peer: str,
        dataset: str,
        peer_dataset: str,
        model: Union[PathLike, TrainResult],
        protocol: str = "ecdh",
        out: Optional[PathLike] = None,
        progress: Progress = True,
    ) -> Union["pd.DataFrame", Path]:
        """Scores the aligned rows of ``dataset`` and the peer's ``peer_dataset`` with a model of
        a train job (this node's model file, or the :class:`TrainResult`). Returns the
        predictions (key columns and ``score``, the probability) as a DataFrame, or with ``out``
        the path the node wrote them to (sealed).

        The job kind follows the model file, as ``consort score`` chooses it: a SecureBoost
        model (read with the node's storage key) runs a ``secureboost-score`` job, which the
        peer scores with its half of the same train job, on the dataset it was trained on; any
        other file a logistic-regression ``score`` job."""
        model_path = model.model if isinstance(model, TrainResult) else Path(os.fspath(model))
        target = Path(os.fspath(out)) if out is not None else self._default_out(f"predictions-{dataset}", "csv")
        job_id = self._native.submit_score(
            peer, dataset, peer_dataset, os.fspath(model_path), protocol, os.fspath(target)
        )
        status = self._finish(job_id, progress, "score")
        if out is not None:
            return Path(status["output"])
        return self._read_frame(status["output"], self._keys(dataset))

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job the node has a record of (as ``consort jobs --json``), oldest first."""
        return json.loads(self._native.jobs())

    def job(self, job_id: str) -> Dict[str, Any]:
        """One job's record (as ``consort job --json``; train and score jobs, LR and SecureBoost,
        add ``report``)."""
        return json.loads(self._native.job(job_id))

    def wait(self, job_id: str, progress: Progress = True) -> Dict[str, Any]:
        """Waits for a job to end and returns its record (whatever its final state)."""
        callback, close = _progress(progress, f"job {job_id}")
        try:
            return json.loads(self._native.wait(job_id, callback))
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"stopped waiting for job {job_id}; it runs on in the node (the control API has no "
                f"cancel): follow it with node.job({job_id!r})"
            ) from None
        finally:
            close()

    def read_output(self, path: PathLike, key: Union[str, Sequence[str]] = ()) -> "pd.DataFrame":
        """The plaintext of a CSV output this node wrote (sealed or not) as a DataFrame; ``key``
        columns are read as strings."""
        keys = [] if key == () else _frames.keys_list(key)
        return self._read_frame(os.fspath(path), keys)

    # -- helpers --------------------------------------------------------------------------------

    def _finish(self, job_id: str, progress: Progress, kind: str) -> Dict[str, Any]:
        status = self.wait(job_id, progress)
        state = status.get("state")
        if state == "done":
            return status
        message = status.get("error") or f"{kind} job {job_id} ended {state}"
        # A requester records a job its peer refused as ``failed`` with ``refused_by_peer`` set;
        # the peer's own record (and a refusal by this node's policy) says ``refused``.
        if state == "refused" or status.get("refused_by_peer"):
            raise JobRefused(message, job_id, status)
        raise JobFailed(message, job_id, status)

    def _keys(self, dataset: str) -> List[str]:
        for d in self.datasets():
            if d["name"] == dataset:
                return list(d["keys"])
        return []

    def _read_frame(self, path: str, keys: Sequence[str]) -> "pd.DataFrame":
        plain = self._native.read_output(path)
        return _frames.to_pandas(_frames.read_csv(plain, keys))

    def _default_out(self, stem: str, ext: str) -> Path:
        return self.dir / "outputs" / f"{stem}-{time.time_ns()}.{ext}"


def _progress(progress: Progress, desc: str) -> Tuple[Optional[Callable[[str, int, int], None]], Callable[[], None]]:
    """A progress callback (tqdm if installed) and how to close it."""
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return None, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=0, desc=desc, leave=False)

    def update(stage: str, done: int, total: int) -> None:
        bar.set_description(f"{desc}: {stage}", refresh=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close
