//! [`Entries`]: a log's entries, in chunks, so that no append ever moves
//! the ones before it.
//!
//! Why: a `VecDeque` doubles, and a job fanned out to K subscribers appends
//! to K logs of the same length, so all K doubled in the same append. At
//! 1,000 subscribers the append of event 257 moved 18 MB and took 8-10 ms
//! where the others took 0.2 ms (`cargo bench --bench event_log --
//! --fan-out-only`), and every reader's copy of that event, and of the
//! events queued behind it, was late: the fan-out benchmark's p99.
//!
//! Here an append moves at most the first chunk, while it grows as a
//! `VecDeque` to at most [`FIRST_MAX`] entries; after that it allocates a
//! new chunk now and then and moves nothing. The chunks double in size up
//! to [`CHUNK_MAX`]: a short log stays small, and a long one is read
//! (replay) from long runs of adjacent entries. Its chunked replay runs at
//! about 0.6 of one `VecDeque`'s speed (0.4 ms for 100k entries), where
//! fixed chunks of 32 were 4-8 times slower. The first
//! chunk's size differs between logs created one after another, so the
//! logs of one job's subscribers take turns starting their chunks.

use std::collections::VecDeque;
use std::ops::{Index, Range};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The first chunk's size is between half this and this.
const FIRST_MAX: usize = 32;

/// The largest chunk; each chunk after the first is twice the one before,
/// up to this.
const CHUNK_MAX: usize = 1024;

/// Counts the logs created, to give each its first chunk's size.
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A double-ended queue that appends at the back and removes at the front,
/// indexed from the front, in chunks. Only the last chunk takes entries,
/// and only up to its size, so every chunk but the last is full, except
/// that the first may have lost entries at its front. Sizes never shrink
/// from one chunk to the next.
pub(super) struct Entries<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
    /// How many entries the last chunk takes.
    last_size: usize,
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
            last_size: FIRST_MAX / 2 + turn % (FIRST_MAX / 2),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push_back(&mut self, entry: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < self.last_size => last.push_back(entry),
            Some(_) => {
                // Allocated at its full size at once, never moved.
                self.last_size = (self.last_size * 2).min(CHUNK_MAX);
                let mut chunk = VecDeque::with_capacity(self.last_size);
                chunk.push_back(entry);
                self.chunks.push_back(chunk);
            }
            // The first chunk grows as a VecDeque does, to `last_size`.
            None => self.chunks.push_back(VecDeque::from([entry])),
        }
        self.len += 1;
    }

    pub(super) fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let entry = first.pop_front();
        self.len -= 1;
        if first.is_empty() {
            self.chunks.pop_front();
        }
        if self.chunks.is_empty() {
            // Empty again (all acknowledged): start over small, as a new
            // log would, rather than grow a first chunk to the largest size.
            *self = Entries::new();
        }
        entry
    }

    pub(super) fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    /// The chunk and the place in it of entry `index`: a walk over the
    /// chunks smaller than [`CHUNK_MAX`] (a few at most), then arithmetic,
    /// since every chunk after a full one of that size is one too (but the
    /// last, which is not full).
    fn locate(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.len {
            return None;
        }
        let mut rest = index;
        for (number, chunk) in self.chunks.iter().enumerate() {
            if rest < chunk.len() {
                return Some((number, rest));
            }
            rest -= chunk.len();
            if chunk.len() == CHUNK_MAX {
                return Some((number + 1 + rest / CHUNK_MAX, rest % CHUNK_MAX));
            }
        }
        None
    }

    pub(super) fn get(&self, index: usize) -> Option<&T> {
        let (chunk, offset) = self.locate(index)?;
        self.chunks[chunk].get(offset)
    }

    /// Entries `from..`, in order, as the slices they lie in: a reader's
    /// inner loop over a slice is as tight as over one `VecDeque`'s.
    pub(super) fn slices_from(&self, from: usize) -> impl Iterator<Item = &[T]> {
        let (chunk, offset) = self.locate(from).unwrap_or((self.chunks.len(), 0));
        self.chunks
            .range(chunk..)
            .enumerate()
            .flat_map(move |(n, entries)| {
                let (front, back) = entries.as_slices();
                let skip = if n == 0 { offset } else { 0 };
                let front_skip = skip.min(front.len());
                [&front[front_skip..], &back[skip - front_skip..]]
            })
            .filter(|slice| !slice.is_empty())
    }

    /// Entries `from..`, in order.
    pub(super) fn iter_from(&self, from: usize) -> impl Iterator<Item = &T> {
        self.slices_from(from).flatten()
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
        Push(usize),
        Pop(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Pushes outnumber pops, and come in runs long enough for the
        // queue to reach chunks of the largest size.
        let op = prop_oneof![
            3 => (1usize..1500).prop_map(Op::Push),
            1 => (1usize..1500).prop_map(Op::Pop),
        ];
        proptest::collection::vec(op, 0..12)
    }

    proptest! {
        /// Every operation and every read agrees with a `VecDeque`.
        #[test]
        fn behaves_as_a_deque(ops in ops(), start in 0usize..20_000, take in 0usize..5000) {
            let (mut entries, mut model) = (Entries::new(), VecDeque::new());
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Push(count) => {
                        for _ in 0..count {
                            entries.push_back(next);
                            model.push_back(next);
                            next += 1;
                        }
                    }
                    Op::Pop(count) => {
                        for _ in 0..count {
                            prop_assert_eq!(entries.pop_front(), model.pop_front());
                        }
                    }
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
            prop_assert!(entries.slices_from(start).flatten().eq(model.iter().skip(start)));
            prop_assert!(entries.slices_from(start).all(|slice| !slice.is_empty()));
            let start = start.min(model.len());
            let end = (start + take).min(model.len());
            prop_assert!(entries.range(start..end).eq(model.range(start..end)));
        }
    }

    #[test]
    fn appends_never_move_an_entry_past_the_first_chunk() {
        let mut entries = Entries::new();
        for n in 0..FIRST_MAX * 2 {
            entries.push_back(n);
        }
        let second_chunk = &entries[FIRST_MAX] as *const usize;
        for n in 0..CHUNK_MAX * 10 {
            entries.push_back(n);
        }
        assert_eq!(&entries[FIRST_MAX] as *const usize, second_chunk);
        // Sizes double to the largest, then stay.
        let sizes: Vec<usize> = entries.chunks.iter().map(VecDeque::len).collect();
        assert!(sizes
            .windows(2)
            .all(|pair| pair[0] <= pair[1] || pair[1] < CHUNK_MAX));
        assert!(sizes.len() < 20, "{sizes:?}");
    }

    #[test]
    fn a_log_emptied_and_filled_again_stays_small() {
        let mut entries = Entries::new();
        for n in 0..5000u64 {
            entries.push_back(n);
        }
        while entries.pop_front().is_some() {}
        for n in 0..40u64 {
            entries.push_back(n);
        }
        // The first chunk stops small again, so it is never moved far.
        assert!(entries.chunks[0].capacity() <= FIRST_MAX);
        assert!(entries.iter().copied().eq(0..40));
    }

    #[test]
    fn a_short_log_stays_small() {
        let mut entries = Entries::new();
        for n in 0..40u64 {
            entries.push_back(n);
        }
        let capacity: usize = entries.chunks.iter().map(VecDeque::capacity).sum();
        assert!(capacity <= 128, "{capacity} entries allocated for 40");
    }

    #[test]
    fn logs_created_together_start_new_chunks_in_different_appends() {
        let mut logs: Vec<Entries<u8>> = (0..FIRST_MAX / 2).map(Entries::taking_turn).collect();
        let mut started = Vec::new();
        for append in 0..FIRST_MAX {
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
        // Each log started its second chunk within these appends.
        assert_eq!(started.iter().sum::<usize>(), logs.len());
    }

    #[test]
    #[should_panic(expected = "out of")]
    fn a_range_past_the_end_panics_as_a_slice_would() {
        let mut entries = Entries::new();
        entries.push_back(1);
        let _ = entries.range(0..2).count();
    }
}
