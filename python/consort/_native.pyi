"""Type stubs of the native extension (``python/src/``). Statuses and reports cross as JSON text;
the Python modules parse them."""

from typing import Callable, List, Optional

__version__: str

class NativeNode:
    def __init__(self, dir: str) -> None: ...
    @property
    def dir(self) -> str: ...
    def info(self) -> str: ...
    def datasets(self) -> str: ...
    def add_dataset(
        self,
        name: str,
        file: str,
        keys: List[str],
        grants: List[str],
        dedup: bool,
        case_fold: bool,
        trim: bool,
        replace: bool,
        check: bool,
    ) -> str: ...
    def submit_psi(
        self, peer: str, dataset: str, peer_dataset: str, protocol: str, reveal: str, out: Optional[str] = None
    ) -> str: ...
    def submit_train(
        self,
        peer: str,
        dataset: str,
        peer_dataset: str,
        label: str,
        features: List[str],
        protocol: str,
        model: str,
        params: str,
        out: str,
    ) -> str: ...
    def submit_score(
        self, peer: str, dataset: str, peer_dataset: str, model: str, protocol: str, out: str
    ) -> str: ...
    def wait(self, job_id: str, progress: Optional[Callable[[str, int, int], None]] = None) -> str: ...
    def job(self, job_id: str) -> str: ...
    def jobs(self) -> str: ...
    def read_output(self, path: str) -> bytes: ...

def intersect_files(
    left: str,
    right: str,
    keys: List[str],
    protocol: str,
    trim: bool,
    case_fold: bool,
    dedup: bool,
    left_out: str,
    right_out: str,
) -> str: ...
def verify_bundles(bundles: List[str], keys: List[str], full: bool = False) -> str: ...
