//! A live session's event feed: its recent SSE frames, written by the session's actor (the one writer) and
//! read by every stream subscriber at its own cursor.
//!
//! Nothing is queued per subscriber. A subscriber that wakes up takes every frame after its cursor as one
//! chunk, so a burst of events costs one socket write per subscriber rather than one per event, and the
//! actor's cost of publishing does not grow with the number of watchers. A subscriber is never waited for
//! and never cut off: one that falls behind the feed's floor (the oldest frame still held) has missed only
//! what was evicted, and reads the durable items of that stretch from the store (see `http::stream`).
//!
//! The same frames serve `Last-Event-ID` replay: a reconnecting client is a subscriber whose cursor starts
//! in the past.

use std::collections::VecDeque;
use std::sync::RwLock;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

/// What a subscriber finds after its cursor.
#[derive(Debug, PartialEq)]
pub enum Read {
    /// Frames after the cursor, concatenated; `last` is the sequence number of the last one.
    Frames { chunk: Bytes, last: u64 },
    /// Frames after the cursor were evicted: everything from `floor` on is still here.
    Behind { floor: u64 },
    /// Nothing new yet.
    UpToDate,
    /// Nothing new, and nothing will come: the session was deleted or its actor stopped.
    Closed,
}

/// One session's recent frames and the signal that new ones arrived.
#[derive(Debug)]
pub struct Feed {
    log: RwLock<Log>,
    /// The sequence number of the newest frame; subscribers wait on it.
    head: watch::Sender<u64>,
}

#[derive(Debug)]
struct Log {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Every frame published with a sequence number ≥ `floor` is in `frames`.
    floor: u64,
    closed: bool,
    max_frames: usize,
    max_bytes: usize,
}

impl Feed {
    /// An empty feed whose first frame will carry `first_seq` or later, holding at most `max_frames` frames
    /// and `max_bytes` bytes (the newest frame is always kept).
    pub fn new(first_seq: u64, max_frames: usize, max_bytes: usize) -> Self {
        Feed {
            log: RwLock::new(Log {
                frames: VecDeque::new(),
                bytes: 0,
                floor: first_seq,
                closed: false,
                max_frames: max_frames.max(1),
                max_bytes,
            }),
            head: watch::channel(first_seq.saturating_sub(1)).0,
        }
    }

    /// Append the frame of event `seq` (sequence numbers only grow). Readers see it at once; waiting
    /// subscribers are woken by the next [`Feed::wake`], so the writer can append a burst and wake them once.
    pub fn push(&self, seq: u64, frame: Bytes) {
        let mut log = self.write();
        log.bytes += frame.len();
        log.frames.push_back((seq, frame));
        while log.frames.len() > 1
            && (log.frames.len() > log.max_frames || log.bytes > log.max_bytes)
        {
            if let Some((old, f)) = log.frames.pop_front() {
                log.floor = old + 1;
                log.bytes -= f.len();
            }
        }
    }

    /// Wake the subscribers waiting for frames pushed since the last wake (if any were).
    pub fn wake(&self) {
        let newest = self
            .log
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .frames
            .back()
            .map(|(seq, _)| *seq);
        if let Some(newest) = newest {
            self.head.send_if_modified(|head| {
                let news = *head != newest;
                *head = newest;
                news
            });
        }
    }

    /// No frame will follow: subscribers drain what is here, then end.
    pub fn close(&self) {
        self.write().closed = true;
        self.head.send_modify(|_| {});
    }

    /// A new subscriber's wake-up signal; it also counts the subscriber (see [`Feed::subscribers`]).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Live subscribers (each holds the receiver [`Feed::watch`] gave it).
    pub fn subscribers(&self) -> usize {
        self.head.receiver_count()
    }

    /// The frames after `cursor`, at most about `max_chunk` bytes of them (always at least one), copied into
    /// one chunk (a copy is cheaper than sharing: every subscriber touching the same reference counts would
    /// make the cores fight over them).
    pub fn read(&self, cursor: u64, max_chunk: usize) -> Read {
        let log = self
            .log
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cursor.saturating_add(1) < log.floor {
            return Read::Behind { floor: log.floor };
        }
        let start = log.frames.partition_point(|(seq, _)| *seq <= cursor);
        if start == log.frames.len() {
            return if log.closed {
                Read::Closed
            } else {
                Read::UpToDate
            };
        }
        let mut size = 0;
        let mut end = start;
        for (_, frame) in log.frames.range(start..) {
            if size > 0 && size + frame.len() > max_chunk {
                break;
            }
            size += frame.len();
            end += 1;
        }
        let mut chunk = BytesMut::with_capacity(size);
        for (_, frame) in log.frames.range(start..end) {
            chunk.extend_from_slice(frame);
        }
        Read::Frames {
            chunk: chunk.freeze(),
            last: log.frames[end - 1].0,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        self.log
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(feed: &Feed, cursor: u64, max: usize) -> (String, u64) {
        match feed.read(cursor, max) {
            Read::Frames { chunk, last } => {
                (String::from_utf8(chunk.to_vec()).expect("utf-8"), last)
            }
            other => panic!("expected frames, got {other:?}"),
        }
    }

    #[test]
    fn readers_take_everything_after_their_cursor_in_one_chunk() {
        let feed = Feed::new(1, 100, 1 << 20);
        assert_eq!(feed.read(0, 1024), Read::UpToDate);
        for (seq, s) in [(1, "a"), (2, "b"), (4, "d")] {
            feed.push(seq, Bytes::from(s));
        }
        assert_eq!(frames(&feed, 0, 1024), ("abd".into(), 4));
        // Sequence numbers may skip (an item persisted without a broadcast): the cursor still works.
        assert_eq!(frames(&feed, 2, 1024), ("d".into(), 4));
        assert_eq!(frames(&feed, 3, 1024), ("d".into(), 4));
        assert_eq!(feed.read(4, 1024), Read::UpToDate);
        // The chunk cap splits, but never below one frame.
        assert_eq!(frames(&feed, 0, 2), ("ab".into(), 2));
        assert_eq!(frames(&feed, 0, 0), ("a".into(), 1));
    }

    #[test]
    fn eviction_by_count_and_bytes_raises_the_floor() {
        let feed = Feed::new(10, 3, 1 << 20);
        for seq in 10..15 {
            feed.push(seq, Bytes::from(seq.to_string()));
        }
        // 10 and 11 are gone: a cursor of 9 or 10 is behind, 11 is not (12.. are all here).
        assert_eq!(feed.read(9, 1024), Read::Behind { floor: 12 });
        assert_eq!(feed.read(10, 1024), Read::Behind { floor: 12 });
        assert_eq!(frames(&feed, 11, 1024), ("121314".into(), 14));
        let feed = Feed::new(1, 100, 4);
        feed.push(1, Bytes::from("aa"));
        feed.push(2, Bytes::from("bb"));
        feed.push(3, Bytes::from("cc"));
        assert_eq!(feed.read(0, 1024), Read::Behind { floor: 2 });
        // A single frame larger than the byte cap is still kept.
        feed.push(4, Bytes::from("0123456789"));
        assert_eq!(frames(&feed, 3, 1024), ("0123456789".into(), 4));
    }

    #[tokio::test]
    async fn subscribers_are_woken_counted_and_drain_before_closed() {
        let feed = Feed::new(1, 10, 1024);
        let mut rx = feed.watch();
        assert_eq!(feed.subscribers(), 1);
        feed.push(1, Bytes::from("x"));
        assert!(
            !rx.has_changed().expect("open"),
            "a push alone wakes nobody"
        );
        feed.wake();
        rx.changed().await.expect("woken");
        feed.wake();
        assert!(!rx.has_changed().expect("open"), "nothing new, no wake-up");
        feed.close();
        rx.changed().await.expect("woken by close");
        assert_eq!(frames(&feed, 0, 1024), ("x".into(), 1));
        assert_eq!(feed.read(1, 1024), Read::Closed);
        drop(rx);
        assert_eq!(feed.subscribers(), 0);
    }
}
