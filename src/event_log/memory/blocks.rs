//! A session's frames, back to back in a few large buffers (see the
//! [module documentation](super)).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// The smallest allocation for frames: what a session's first block gets.
pub(super) const MIN_BLOCK_CAPACITY: usize = 4 * 1024;

/// The largest allocation for frames. A frame larger than this is stored as
/// a block of its own. A replay writes at most one block per write, so this
/// is also the largest replay write: at 256 KiB, `strace` of a 100k-event
/// replay showed 180 writes of 256 KiB where a plain writer makes 45 of
/// 1 MiB; reaching 1 MiB takes a session retaining 4 MiB (the quarter
/// rule of [`super::session_log::SessionLog::push`]).
pub(super) const MAX_BLOCK_CAPACITY: usize = 1024 * 1024;

/// A session's frames, back to back in numbered blocks (see the
/// [module documentation](super)).
///
/// Blocks are numbered in the order they are started, from 0, and keep
/// their number for life. Sealed block `n` is `sealed[n - first]`; the open
/// tail is always number `first + sealed.len()`, which is the number it
/// keeps once sealed. So the number an entry records at append time stays
/// right when the tail is sealed and when older blocks are dropped.
pub(super) struct Blocks {
    /// Immutable blocks, oldest first. Each holds at least one frame.
    pub(super) sealed: VecDeque<Bytes>,
    /// The number of `sealed[0]`.
    pub(super) first: u64,
    /// The block being written. Its spare capacity is never grown in place
    /// (that would move the frames already in it): when a frame does not
    /// fit, the tail is sealed and replaced.
    pub(super) tail: BytesMut,
    /// How many frames the tail holds. (Counted rather than read off the
    /// length so that even an empty frame gets its block sealed.)
    pub(super) tail_frames: usize,
}

impl Blocks {
    pub(super) fn new() -> Self {
        Blocks {
            sealed: VecDeque::new(),
            first: 0,
            // No allocation until the first frame.
            tail: BytesMut::new(),
            tail_frames: 0,
        }
    }

    /// The number of the open tail.
    pub(super) fn tail_number(&self) -> u64 {
        self.first + self.sealed.len() as u64
    }

    /// Stores a frame after every frame stored so far; returns the number of
    /// its block and where in that block it starts. If the tail has no room
    /// for it, the next allocation gets `capacity` bytes (or the frame's
    /// size if larger).
    pub(super) fn push(&mut self, frame: &Bytes, capacity: usize) -> (u64, usize) {
        let room = self.tail.capacity() - self.tail.len();
        if frame.len() > room {
            self.seal_tail();
            if frame.len() > MAX_BLOCK_CAPACITY {
                // A block of its own: keep the encoder's buffer, no copy.
                let number = self.tail_number();
                self.sealed.push_back(frame.clone());
                return (number, 0);
            }
            self.tail = BytesMut::with_capacity(capacity.max(frame.len()));
        }
        let start = self.tail.len();
        // Fits in the spare capacity checked above, so this never
        // reallocates.
        self.tail.extend_from_slice(frame);
        self.tail_frames += 1;
        (self.tail_number(), start)
    }

    /// Turns what the tail holds into the next sealed block, without
    /// copying; the tail keeps the allocation's spare room. A tail without
    /// frames is left alone (no empty blocks), and keeps its number.
    pub(super) fn seal_tail(&mut self) {
        if self.tail_frames > 0 {
            self.sealed.push_back(self.tail.split().freeze());
            self.tail_frames = 0;
        }
    }

    /// Sealed block `number`. Panics if it is not a retained sealed block,
    /// which would be a bug in [`SessionLog`]: every retained entry's block
    /// is retained, and readers seal the tail before slicing.
    pub(super) fn sealed(&self, number: u64) -> &Bytes {
        number
            .checked_sub(self.first)
            .and_then(|index| self.sealed.get(index as usize))
            .expect("a retained entry lies in a retained sealed block")
    }

    /// The bytes of block `number`, sealed or the tail, for copying.
    pub(super) fn contents(&self, number: u64) -> &[u8] {
        if number == self.tail_number() {
            &self.tail
        } else {
            self.sealed(number)
        }
    }

    /// How many bytes block `number` holds (the tail: so far).
    pub(super) fn len(&self, number: u64) -> usize {
        self.contents(number).len()
    }

    /// Drops every sealed block numbered below `number`.
    pub(super) fn drop_before(&mut self, number: u64) {
        while self.first < number && self.sealed.pop_front().is_some() {
            self.first += 1;
        }
    }
}
