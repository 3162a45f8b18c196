//! `consort._native`: the Rust side of the `consort` Python package.
//!
//! A thin layer: the Python package (`python/consort/`) turns DataFrames into CSV files and back
//! and raises its typed exceptions; this module calls the code the CLI calls — the control-socket
//! client ([`consort_api::NodeClient`]), dataset registration ([`consort_node::setup`]), the
//! storage key ([`consort_node::at_rest`]), the SDK's in-process join ([`consort_sdk`]) and the
//! engine's audit verifier. Values cross the boundary as paths, JSON text and one `bytes` object
//! per output file, never one Python object per row.
//!
//! Every call that waits (a job, a join, a file check) releases the GIL and wakes every
//! [`POLL`] to run Python's signal handlers, so Ctrl-C in a notebook interrupts the wait.

mod audit;
mod errors;
mod join;
mod node;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

use errors::Failure;

/// How often a wait wakes to check for Ctrl-C (and to report progress).
const POLL: Duration = Duration::from_millis(100);

/// One multi-threaded runtime for the process: the control-socket client and the in-process joins
/// run on it; CPU-heavy protocol steps go to rayon as in the node.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("consort-py")
            .build()
            .expect("cannot start the tokio runtime")
    })
}

/// Runs `future` on the runtime without the GIL, waking every [`POLL`] to call `tick` (progress)
/// and check for signals. On a signal (Ctrl-C: `KeyboardInterrupt`) the task is aborted — dropped
/// at its next await point — and the signal's exception is returned.
fn block_on<T, F>(py: Python<'_>, future: F, mut tick: impl FnMut(Python<'_>) -> PyResult<()>) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    let rt = runtime();
    let mut task = rt.spawn(future);
    loop {
        // The timer is made inside the runtime (block_on enters it): a Sleep needs its reactor.
        let waited = py.allow_threads(|| rt.block_on(async { tokio::time::timeout(POLL, &mut task).await }));
        match waited {
            Ok(Ok(result)) => return result.map_err(|f| f.into_py_err(py)),
            Ok(Err(join_error)) => {
                return Err(Failure::Other(format!("internal error: the task failed: {join_error}")).into_py_err(py));
            }
            Err(_elapsed) => {
                let checked = py.check_signals().and_then(|()| tick(py));
                if let Err(e) = checked {
                    task.abort();
                    return Err(e);
                }
            }
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<node::NativeNode>()?;
    m.add_function(wrap_pyfunction!(join::intersect_files, m)?)?;
    m.add_function(wrap_pyfunction!(audit::verify_bundles, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
