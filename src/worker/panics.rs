//! A panic in one delivery's handling must not wedge the replica: an uncaught panic ends the
//! task without an ack or nack, so the delivery holds a prefetch slot forever. These turn a
//! panic back into a value the handler can settle.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Runs `future`; a panic inside it comes back as its message. Whatever it held (a build slot,
/// its running-build entry, a checkout) was dropped while unwinding.
pub async fn caught<T>(future: impl Future<Output = T>) -> Result<T, String> {
    // The future is dropped after a panic, never polled again, so state it left half-changed
    // is not observed through it.
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| message(payload.as_ref()))
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let err = caught(async { panic!("boom {}", 1) }).await;
        assert_eq!(err, Err::<(), _>("boom 1".to_owned()));
    }
}
