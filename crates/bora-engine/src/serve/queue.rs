//! The count that `EngineConfig::max_queue` bounds: requests submitted and not yet admitted,
//! whose caller still waits for them.
//!
//! Each submitted request holds one [`QueueSlot`], shared by its choices' sequences and by the
//! caller's [`super::CompletionStream`]. The slot leaves the count once, at whichever comes
//! first: a choice admitted, the caller's stream dropped (a client that went away: the count
//! falls at once, not when the engine next looks at its queue), the request refused, or every
//! holder gone. A request whose caller left therefore never stands in a live client's way, even
//! while its sequences still wait in the engine's channel for the next step to drop them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The engine's count of waiting requests (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueCount(Arc<AtomicUsize>);

impl QueueCount {
    /// Requests counted now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// A slot for one more request, or `None` when `max` are already counted.
    pub fn enter(&self, max: usize) -> Option<Arc<QueueSlot>> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Arc::new(QueueSlot {
            counted: AtomicBool::new(true),
            count: self.clone(),
        }))
    }
}

/// One request's place in the [`QueueCount`].
#[derive(Debug)]
pub(crate) struct QueueSlot {
    counted: AtomicBool,
    count: QueueCount,
}

impl QueueSlot {
    /// Takes the request off the count; only the first call counts.
    pub fn leave(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.count.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_leaves_the_count_once_whoever_lets_go() {
        let count = QueueCount::default();
        let a = count.enter(2).expect("room for the first");
        let b = count.enter(2).expect("room for the second");
        assert!(count.enter(2).is_none(), "a third is over the bound");
        assert_eq!(count.get(), 2);
        // Admitted, then the caller drops its stream: one decrement.
        a.leave();
        a.leave();
        assert_eq!(count.get(), 1);
        drop(a);
        assert_eq!(count.get(), 1);
        // The last holder of a slot still counted gives it back.
        let held = b.clone();
        drop(b);
        assert_eq!(count.get(), 1, "another holder still has it");
        drop(held);
        assert_eq!(count.get(), 0);
        assert!(count.enter(1).is_some());
    }
}
