//! A bounded queue from the engine to one of the application's threads (talk-back, receive)
//! that allocates as it fills instead of up front.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates all `n` slots when it is made (~20 KB for the
//! talk-back queue, ~100 KB for the receive queue) although the queue is nearly always empty:
//! the consuming thread takes each item at once. This queue is std's unbounded channel (which
//! allocates blocks of slots as they are used and frees them once read) with a counter that
//! refuses an item beyond the bound, so a stalled consumer still cannot make it grow. It owns
//! only the counting; it must not block the engine (sending never waits).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// A queue holding at most `bound` items (0: every send is refused).
pub fn bounded<T>(bound: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            queued: queued.clone(),
            bound,
        },
        QueueReceiver { rx, queued },
    )
}

/// The engine's end: sends never wait.
#[derive(Debug)]
pub struct QueueSender<T> {
    tx: mpsc::Sender<T>,
    queued: Arc<AtomicUsize>,
    bound: usize,
}

impl<T> QueueSender<T> {
    /// Queue `item`, or give it back: `Full` at the bound, `Disconnected` once the receiver
    /// is gone.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        // Counted before the send so a receiver never sees the count go below zero.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(item));
        }
        self.tx.send(item).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(e.0)
        })
    }
}

/// The consuming thread's end.
#[derive(Debug)]
pub struct QueueReceiver<T> {
    rx: mpsc::Receiver<T>,
    queued: Arc<AtomicUsize>,
}

impl<T> QueueReceiver<T> {
    /// The next item, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let item = self.rx.recv_timeout(timeout)?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(item)
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_bound_and_takes_again_once_read() {
        let (tx, rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_recv().unwrap(), 1);
        tx.try_send(4).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)).unwrap(), 2);
        assert_eq!(rx.try_recv().unwrap(), 4);
        assert!(rx.is_empty());
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn bound_zero_refuses_everything_and_a_dropped_receiver_is_reported() {
        let (tx, rx) = bounded(0);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Full(1))));
        let (tx2, rx2) = bounded(4);
        drop(rx2);
        assert!(matches!(
            tx2.try_send(7),
            Err(TrySendError::Disconnected(7))
        ));
        drop(rx);
    }

    #[test]
    fn a_consumer_thread_sees_every_item_in_order() {
        let (tx, rx) = bounded(8);
        let consumer = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 1000 {
                if let Ok(v) = rx.recv_timeout(Duration::from_secs(5)) {
                    got.push(v);
                }
            }
            got
        });
        let mut sent = 0;
        while sent < 1000 {
            match tx.try_send(sent) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full(_)) => std::thread::yield_now(),
                Err(TrySendError::Disconnected(_)) => panic!("receiver gone"),
            }
        }
        assert_eq!(consumer.join().unwrap(), (0..1000).collect::<Vec<_>>());
    }
}
