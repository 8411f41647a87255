//! One session's log: its retained entries, their frames' blocks, and how a
//! read turns them into chunks.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::blocks::{Blocks, MAX_BLOCK_CAPACITY, MIN_BLOCK_CAPACITY};
use super::deferred::{id_mix, Deferred, HeadShape};
use crate::event_log::budget::Account;
use crate::event_log::entries::Entries;
use crate::event_log::{EventLogError, LiveTap, LogBounds, LogEntry, ReadLimit};
use crate::ids::{EventSeq, JobId, SessionId};

/// A zero-copy chunk smaller than this, cut short only by the end of its
/// block, is replaced by a copied chunk spanning the following small blocks
/// (those under this size).
const SMALL_CHUNK: usize = 16 * 1024;

/// The largest copied chunk: small enough to be served from the allocator's
/// heap rather than a fresh mapping, large enough to make a replay of tiny
/// blocks cost few writes.
pub(super) const MAX_COPIED_CHUNK: usize = 64 * 1024;

/// One retained event: where its frame lies, not the frame itself.
pub(super) struct StoredEntry {
    pub(super) seq: EventSeq,
    pub(super) job_id: JobId,
    /// The number of the block holding the frame.
    pub(super) block: u64,
    /// The frame is `block[start..start + len]`.
    pub(super) start: usize,
    pub(super) len: usize,
    /// The envelope JSON's span within the frame.
    pub(super) envelope: Range<usize>,
    /// Set for a fan-out copy whose frame is not in the blocks but written
    /// when read. Its `block` is then the tail's number when it was
    /// appended (so entries' block numbers never decrease) and `start` is 0.
    pub(super) deferred: Option<Arc<Deferred>>,
}

impl StoredEntry {
    pub(super) fn frame_range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

pub(super) struct SessionLog {
    /// Whose log it is: deferred frames carry the session's id.
    pub(super) session_id: SessionId,
    /// [`id_mix`] of `session_id`.
    pub(super) id_mix: u64,
    /// The shape of the last deferred head written for its length (see
    /// [`HeadEncoder`]): appends of the same shape skip writing it.
    pub(super) head_shape: Option<HeadShape>,
    /// The session's stream, offered each append ([`LiveTap`]).
    pub(super) tap: Option<Arc<dyn LiveTap>>,
    /// Set by [`EventLog::remove`]: no tap may attach any more.
    pub(super) removed: bool,
    /// Whether a tap may attach at all (see [`SessionSlot::new`]).
    pub(super) taps: bool,
    /// Contiguous entries `floor + 1 ..= newest`.
    pub(super) entries: Entries<StoredEntry>,
    /// Their frames, in the same order.
    pub(super) blocks: Blocks,
    pub(super) floor: EventSeq,
    pub(super) newest: EventSeq,
    /// The sum of the retained frames' lengths.
    pub(super) retained_bytes: usize,
    /// Where `retained_bytes` is also counted (the owner's and the
    /// gateway's budgets).
    pub(super) account: Arc<Account>,
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        self.account.refund(self.retained_bytes);
    }
}

impl SessionLog {
    pub(super) fn new(session_id: SessionId, floor: EventSeq, account: Arc<Account>) -> Self {
        SessionLog {
            id_mix: id_mix(&session_id),
            session_id,
            head_shape: None,
            tap: None,
            removed: false,
            taps: false,
            entries: Entries::new(),
            blocks: Blocks::new(),
            floor,
            newest: floor,
            retained_bytes: 0,
            account,
        }
    }

    pub(super) fn bounds(&self, visible: EventSeq) -> LogBounds {
        LogBounds {
            floor: self.floor,
            newest: visible.min(self.newest).max(self.floor),
        }
    }

    /// Checks a cursor and returns the index of its first entry after it.
    pub(super) fn start_after(
        &self,
        after: EventSeq,
        visible: EventSeq,
    ) -> Result<usize, EventLogError> {
        let bounds = self.bounds(visible);
        if after < bounds.floor {
            return Err(EventLogError::CursorEvicted {
                floor: bounds.floor,
            });
        }
        if after > bounds.newest {
            return Err(EventLogError::CursorAhead {
                newest: bounds.newest,
            });
        }
        Ok((after - self.floor) as usize)
    }

    /// How many visible entries from `start` fit in `limit`, and the size of
    /// their frames. The byte limit never cuts the first entry. It also
    /// stops before the first entry (after the first) for which
    /// `stop_before` is true.
    pub(super) fn span(
        &self,
        start: usize,
        visible: EventSeq,
        limit: ReadLimit,
        stop_before: impl Fn(&StoredEntry) -> bool,
    ) -> (usize, usize) {
        let (mut count, mut size) = (0usize, 0usize);
        for entries in self.entries.slices_from(start) {
            for entry in entries {
                if entry.seq > visible
                    || count >= limit.max_entries
                    || (count > 0 && size + entry.len > limit.max_bytes)
                    || (count > 0 && stop_before(entry))
                {
                    return (count, size);
                }
                count += 1;
                size += entry.len;
            }
        }
        (count, size)
    }

    /// Seals the tail if the entry at `index` lies in it, so that its frame
    /// (and every one before it) can be shared.
    pub(super) fn seal_through(&mut self, index: usize) {
        let tail = self.blocks.tail_number();
        if self
            .entries
            .get(index)
            .is_some_and(|entry| entry.block == tail)
        {
            self.blocks.seal_tail();
        }
    }

    /// The entry as a [`LogEntry`]: its frame shares its block's memory
    /// (the block must be sealed), or is written now if it is deferred.
    pub(super) fn log_entry(&self, entry: &StoredEntry) -> LogEntry {
        let frame = match &entry.deferred {
            Some(deferred) => {
                let mut frame = Vec::with_capacity(entry.len);
                deferred.write_frame(&mut frame, &self.session_id, self.id_mix, entry.seq);
                debug_assert_eq!(frame.len(), entry.len, "the head's length is its shape's");
                Bytes::from(frame)
            }
            None => self.blocks.sealed(entry.block).slice(entry.frame_range()),
        };
        LogEntry {
            seq: entry.seq,
            job_id: entry.job_id.clone(),
            frame,
            envelope: entry.envelope.clone(),
        }
    }

    /// The visible entries from `start` as one chunk within `limit`, and the
    /// last seq in it; `None` when there are none.
    ///
    /// Normally a slice of one sealed block, cut at the block's end: the
    /// frames of consecutive entries in a block are adjacent. When that
    /// slice would be under [`SMALL_CHUNK`] only because its block ends, and
    /// the next blocks are small too, the frames are copied instead, up to
    /// [`MAX_COPIED_CHUNK`] and never into a block of [`SMALL_CHUNK`] or
    /// more (the next read slices that one). Deferred frames are always
    /// written into a new chunk the same way, never sliced.
    pub(super) fn chunk(
        &mut self,
        start: usize,
        visible: EventSeq,
        limit: ReadLimit,
    ) -> Option<(EventSeq, Bytes)> {
        let first = self.entries.get(start)?;
        let first_block = first.block;
        let sliceable = first.deferred.is_none();
        let (count, size) = if sliceable {
            self.span(start, visible, limit, |entry| {
                entry.block != first_block || entry.deferred.is_some()
            })
        } else {
            (0, 0)
        };
        if sliceable && count == 0 {
            return None;
        }
        if size < SMALL_CHUNK {
            let copy_limit = ReadLimit {
                max_entries: limit.max_entries,
                max_bytes: limit.max_bytes.min(MAX_COPIED_CHUNK),
            };
            let (copy_count, copy_size) = self.span(start, visible, copy_limit, |entry| {
                entry.deferred.is_none()
                    && entry.block != first_block
                    && self.blocks.len(entry.block) >= SMALL_CHUNK
            });
            // Equal counts: the slice was cut by the limit or the watermark,
            // or the next block is large; copying would not help.
            if copy_count > count {
                return Some(self.copied_chunk(start, copy_count, copy_size));
            }
            if copy_count == 0 {
                return None;
            }
        }
        self.seal_through(start);
        let first = &self.entries[start];
        let last = &self.entries[start + count - 1];
        debug_assert_eq!(first.block, last.block);
        debug_assert_eq!(first.start + size, last.start + last.len);
        let block = self.blocks.sealed(first.block);
        Some((last.seq, block.slice(first.start..first.start + size)))
    }

    /// Entries `start .. start + count`, whose frames total `size` bytes,
    /// copied (or, deferred, written) into one new chunk. Frames still in
    /// the tail are copied from it; nothing is sealed.
    pub(super) fn copied_chunk(
        &self,
        start: usize,
        count: usize,
        size: usize,
    ) -> (EventSeq, Bytes) {
        let mut chunk = Vec::with_capacity(size);
        for entry in self.entries.range(start..start + count) {
            match &entry.deferred {
                Some(deferred) => {
                    deferred.write_frame(&mut chunk, &self.session_id, self.id_mix, entry.seq);
                }
                None => {
                    chunk.extend_from_slice(&self.blocks.contents(entry.block)[entry.frame_range()])
                }
            }
        }
        debug_assert_eq!(chunk.len(), size);
        (self.entries[start + count - 1].seq, Bytes::from(chunk))
    }

    pub(super) fn evict_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.retained_bytes -= entry.len;
            self.account.refund(entry.len);
            self.floor = entry.seq;
            match self.entries.front() {
                // Blocks before the oldest retained entry's hold no
                // retained frame.
                Some(oldest) => self.blocks.drop_before(oldest.block),
                // Nothing retained: free everything, the tail's allocation
                // too. No entry refers to a block number any more, so the
                // numbering may start over.
                None => self.blocks = Blocks::new(),
            }
        }
    }

    /// Appends an entry: its frame is copied into the blocks (or kept as a
    /// block of its own if it is large). A new allocation is sized to a
    /// quarter of what the session retains, so the blocks' slack stays in
    /// proportion to the history.
    pub(super) fn push(&mut self, entry: &LogEntry) {
        let capacity = (self.retained_bytes / 4).clamp(MIN_BLOCK_CAPACITY, MAX_BLOCK_CAPACITY);
        let (block, start) = self.blocks.push(&entry.frame, capacity);
        self.retained_bytes += entry.frame.len();
        self.account.charge(entry.frame.len());
        self.newest = entry.seq;
        self.entries.push_back(StoredEntry {
            seq: entry.seq,
            job_id: entry.job_id.clone(),
            block,
            start,
            len: entry.frame.len(),
            envelope: entry.envelope.clone(),
            deferred: None,
        });
    }

    /// Appends a deferred entry whose frame, once written, is `len` bytes
    /// with its envelope at `envelope`. Nothing is copied into the blocks.
    pub(super) fn push_deferred(
        &mut self,
        seq: EventSeq,
        job_id: JobId,
        len: usize,
        envelope: Range<usize>,
        deferred: Arc<Deferred>,
    ) {
        self.retained_bytes += len;
        self.account.charge(len);
        self.newest = seq;
        self.entries.push_back(StoredEntry {
            seq,
            job_id,
            block: self.blocks.tail_number(),
            start: 0,
            len,
            envelope,
            deferred: Some(deferred),
        });
    }
}
