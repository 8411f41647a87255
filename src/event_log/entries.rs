//! [`Entries`]: a log's entries, in fixed-size chunks, so that no append
//! ever moves the ones before it.
//!
//! Why: a `VecDeque` doubles, and a job fanned out to K subscribers appends
//! to K logs of the same length, so all K doubled in the same append. At
//! 1,000 subscribers the append of event 257 moved 18 MB and took 9.6 ms
//! where the others took 0.25 ms (`cargo bench --bench event_log --
//! --fan-out-only` before this), and every reader's copy of that event, and
//! of the events queued behind it, was late: the fan-out benchmark's p99.
//! In chunks of [`CHUNK`], an append moves at most one small chunk (the
//! first one, while it grows to its full size) and otherwise allocates one.
//! And since those K logs would also allocate their chunks in the same
//! append, each log's first chunk stops at its own size between `CHUNK / 2`
//! and `CHUNK`: logs created one after another take turns.

use std::collections::VecDeque;
use std::ops::{Index, Range};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Entries per chunk. The first chunk grows as a `VecDeque` would (a log
/// with a few events stays small), to its own size of at most this; every
/// later chunk is allocated at this size once.
const CHUNK: usize = 32;

/// Counts the logs created, to give each its first chunk's size.
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A double-ended queue that appends at the back and removes at the front,
/// indexed from the front, in chunks: chunk 0 may have lost entries at its
/// front, the last may not be full, every other one holds [`CHUNK`].
pub(super) struct Entries<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
    /// How many entries the first chunk takes while it is the only one.
    first_size: usize,
}

impl<T> Entries<T> {
    pub(super) fn new() -> Self {
        Entries::taking_turn(CREATED.fetch_add(1, Ordering::Relaxed))
    }

    /// The `turn`th log's entries.
    fn taking_turn(turn: usize) -> Self {
        Entries {
            chunks: VecDeque::new(),
            len: 0,
            first_size: CHUNK / 2 + turn % (CHUNK / 2),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push_back(&mut self, entry: T) {
        // Only the last chunk takes entries; one after the first fills to
        // CHUNK, so every chunk between the first and the last is full.
        let room = match self.chunks.len() {
            1 => self.first_size,
            _ => CHUNK,
        };
        match self.chunks.back_mut() {
            Some(last) if last.len() < room => last.push_back(entry),
            _ => {
                // A chunk after the first is allocated full-size at once.
                let mut chunk = match self.chunks.is_empty() {
                    true => VecDeque::new(),
                    false => VecDeque::with_capacity(CHUNK),
                };
                chunk.push_back(entry);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub(super) fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let entry = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        self.len -= 1;
        entry
    }

    pub(super) fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    /// The chunk and the place in it of entry `index`: every chunk after
    /// the first holds CHUNK but the last.
    fn locate(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.len {
            return None;
        }
        let first = self.chunks.front()?.len();
        Some(match index.checked_sub(first) {
            None => (0, index),
            Some(after) => (1 + after / CHUNK, after % CHUNK),
        })
    }

    pub(super) fn get(&self, index: usize) -> Option<&T> {
        let (chunk, offset) = self.locate(index)?;
        self.chunks[chunk].get(offset)
    }

    /// Entries `from..`, in order.
    pub(super) fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        let (chunk, offset) = self.locate(from).unwrap_or((self.chunks.len(), 0));
        self.chunks
            .range(chunk.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(n, entries)| entries.range(if n == 0 { offset } else { 0 }..))
    }

    /// Entries `range`, in order.
    ///
    /// # Panics
    /// If the range ends past the last entry, as a slice would.
    pub(super) fn range(&self, range: Range<usize>) -> impl Iterator<Item = &T> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} out of {} entries",
            self.len
        );
        self.iter_from(range.start).take(range.end - range.start)
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.iter_from(0)
    }
}

impl<T> Index<usize> for Entries<T> {
    type Output = T;

    fn index(&self, index: usize) -> &T {
        self.get(index)
            .unwrap_or_else(|| panic!("entry {index} out of {}", self.len))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Pop,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Pushes outnumber pops, so the queue spans several chunks.
        proptest::collection::vec(prop_oneof![3 => Just(Op::Push), 1 => Just(Op::Pop)], 0..400)
    }

    proptest! {
        /// Every operation and every read agrees with a `VecDeque`.
        #[test]
        fn behaves_as_a_deque(ops in ops(), start in 0usize..400, take in 0usize..400) {
            let (mut entries, mut model) = (Entries::new(), VecDeque::new());
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Push => {
                        entries.push_back(next);
                        model.push_back(next);
                        next += 1;
                    }
                    Op::Pop => prop_assert_eq!(entries.pop_front(), model.pop_front()),
                }
                prop_assert_eq!(entries.len(), model.len());
                prop_assert_eq!(entries.is_empty(), model.is_empty());
                prop_assert_eq!(entries.front(), model.front());
            }
            for index in 0..model.len() + 2 {
                prop_assert_eq!(entries.get(index), model.get(index));
            }
            prop_assert!(entries.iter().eq(model.iter()));
            prop_assert!(entries.iter_from(start).eq(model.iter().skip(start)));
            let start = start.min(model.len());
            let end = (start + take).min(model.len());
            prop_assert!(entries.range(start..end).eq(model.range(start..end)));
        }
    }

    #[test]
    fn appends_never_move_a_full_chunk() {
        let mut entries = Entries::new();
        for n in 0..CHUNK * 3 {
            entries.push_back(n);
        }
        let second_chunk = &entries[CHUNK] as *const usize;
        for n in 0..CHUNK * 100 {
            entries.push_back(n);
        }
        assert_eq!(&entries[CHUNK] as *const usize, second_chunk);
        assert!(entries.chunks.len() >= 103);
    }

    #[test]
    fn logs_created_together_start_new_chunks_in_different_appends() {
        let mut logs: Vec<Entries<u8>> = (0..CHUNK / 2).map(Entries::taking_turn).collect();
        let mut started = Vec::new();
        for append in 0..CHUNK * 2 {
            let before: usize = logs.iter().map(|log| log.chunks.len()).sum();
            for log in &mut logs {
                log.push_back(0);
            }
            let after: usize = logs.iter().map(|log| log.chunks.len()).sum();
            if append > 0 {
                started.push(after - before);
            }
        }
        // Past the first append, no append starts a chunk in every log.
        assert!(started.iter().all(|&count| count <= 1), "{started:?}");
        // Each log started its second chunk, and its third 32 appends later.
        assert_eq!(started.iter().sum::<usize>(), 2 * logs.len());
    }

    #[test]
    #[should_panic(expected = "out of")]
    fn a_range_past_the_end_panics_as_a_slice_would() {
        let mut entries = Entries::new();
        entries.push_back(1);
        let _ = entries.range(0..2).count();
    }
}
