//! What a running consumer can tell an operator: whether it has its partitions and how
//! much it has done. Shared with the admin listener (`/readyz`, `/metrics`) through a
//! cheap clone; updated by the processing task after each assignment and batch.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Figures {
    assigned_once: AtomicBool,
    stopped: AtomicBool,
    partitions: AtomicUsize,
    records: AtomicU64,
    batches: AtomicU64,
    dead_letters: AtomicU64,
}

/// A consumer's live status. Clones share the same figures.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    name: Arc<str>,
    figures: Arc<Figures>,
}

/// The figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSnapshot {
    pub name: String,
    /// The group has given this member its assignment at least once (possibly empty:
    /// a group with more members than partitions leaves some idle, which is ready).
    pub assigned_once: bool,
    /// The consumer has returned (stopped or failed).
    pub stopped: bool,
    pub partitions: usize,
    /// Records applied or dead-lettered in committed batches.
    pub records: u64,
    pub batches: u64,
    pub dead_letters: u64,
}

impl ConsumerStatus {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            figures: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ready: assigned by its group and still running.
    pub fn is_ready(&self) -> bool {
        self.figures.assigned_once.load(Ordering::Relaxed)
            && !self.figures.stopped.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> ConsumerSnapshot {
        let figures = &self.figures;
        ConsumerSnapshot {
            name: self.name.to_string(),
            assigned_once: figures.assigned_once.load(Ordering::Relaxed),
            stopped: figures.stopped.load(Ordering::Relaxed),
            partitions: figures.partitions.load(Ordering::Relaxed),
            records: figures.records.load(Ordering::Relaxed),
            batches: figures.batches.load(Ordering::Relaxed),
            dead_letters: figures.dead_letters.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn assigned(&self, partitions: usize) {
        self.figures.partitions.store(partitions, Ordering::Relaxed);
        self.figures.assigned_once.store(true, Ordering::Relaxed);
    }

    pub(crate) fn batch_committed(&self, records: usize, dead_letters: usize) {
        let figures = &self.figures;
        figures.records.fetch_add(records as u64, Ordering::Relaxed);
        figures.batches.fetch_add(1, Ordering::Relaxed);
        figures
            .dead_letters
            .fetch_add(dead_letters as u64, Ordering::Relaxed);
    }

    pub(crate) fn stopped(&self) {
        self.figures.stopped.store(true, Ordering::Relaxed);
    }
}
