//! Runs CPU-heavy work on rayon and awaits it from async code without blocking the async runtime
//! (and without knowing which runtime drives the future).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;

/// Runs `work` on the rayon pool and resolves to its result. A panic in `work` is resumed in the
/// awaiting task.
pub async fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn(work).await
}

/// Starts `work` on the rayon pool *now* (not at the first poll, unlike [`run`]) and returns a
/// handle that resolves to its result. This is what pipelines use: start computing batch `i + 1`,
/// then send batch `i` while it runs.
///
/// Dropping the handle does not stop the work; its result is discarded.
pub fn spawn<T, F>(work: F) -> Task<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(result);
    });
    Task(rx)
}

/// The result of a [`spawn`]ed computation. A panic in the work is resumed in the awaiting task.
#[must_use = "the result of the work is lost unless the task is awaited"]
pub struct Task<T>(oneshot::Receiver<std::thread::Result<T>>);

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(value))) => Poll::Ready(value),
            Poll::Ready(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Poll::Ready(Err(oneshot::Canceled)) => panic!("rayon dropped a task"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_work_starts_before_it_is_awaited() {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = spawn(move || tx.send(7).unwrap());
        // The work runs without the task being polled.
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)), Ok(7));
        task.await;
        assert_eq!(run(|| 6 * 7).await, 42);
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn panics_are_resumed_in_the_awaiting_task() {
        run(|| panic!("boom")).await
    }
}
