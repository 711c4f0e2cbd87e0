//! The sink process's backlog (docs/design.md, "The books live in the sink"): records its reader
//! thread copied out of the ring, waiting for its books thread. The ring is small (it is resident
//! in the program), and applying a record now and then takes far longer than a ring's worth of
//! the program's work: doubling a block table of millions of entries takes tens of milliseconds,
//! during which the program would wait on a full ring. The reader keeps the ring drained meanwhile;
//! the backlog holds up to a bound, past which the reader waits and the ring fills as before.
//!
//! The ring has one consumer at a time: whoever holds `reading`. The books thread reads the ring
//! itself whenever the backlog is empty (`next`), and adds to the backlog what it reads in the
//! middle of a chunk (`top_up`), so that the reader is only needed while the books are stuck; the
//! reader adds what it read to the backlog before it lets go (`read_into`). Records therefore
//! reach the books in the ring's order: what is read is newer than everything the backlog held
//! when `reading` was taken, and goes after it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Words of records, whole records only, in the order the ring held them.
pub type Chunk = Vec<u64>;

pub struct Backlog {
    state: Mutex<State>,
    /// Signalled when a chunk arrives or the backlog is closed (for the books thread), and when
    /// one is taken (for a reader held back by the bound).
    changed: Condvar,
    max_words: usize,
    /// Held by whoever reads the ring (the reader thread, or the books thread when the backlog
    /// is empty).
    reading: Mutex<()>,
}

/// What the books thread applies next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The oldest chunk of the backlog, or, with the backlog empty, what the books thread read
    /// from the ring itself.
    Chunk(Chunk),
    /// Nothing to apply now: the backlog is empty and `read` read nothing.
    Idle,
    /// Closed, and every chunk taken.
    Closed,
}

/// The bound is on memory: a chunk is counted by its capacity, which a reused chunk keeps from
/// its largest fill (the books thread's top-ups are a fraction of that), held or spare.
struct State {
    chunks: VecDeque<Chunk>,
    /// Capacity of the chunks held.
    held: usize,
    /// Emptied chunks, given back to the reader so that it does not allocate (and fault in)
    /// fresh memory for each one, as many as fit under the bound beside the chunks held.
    spare: Vec<Chunk>,
    spare_words: usize,
    closed: bool,
}

impl Backlog {
    /// A backlog whose chunks take up to `max_words` words of memory before the reader waits.
    pub fn new(max_words: usize) -> Self {
        Backlog {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                held: 0,
                spare: Vec::new(),
                spare_words: 0,
                closed: false,
            }),
            changed: Condvar::new(),
            max_words,
            reading: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked left whole chunks: the state is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty chunk for the reader to fill, reused where one was given back.
    pub fn empty_chunk(&self) -> Chunk {
        let mut state = self.lock();
        let chunk = state.spare.pop().unwrap_or_default();
        state.spare_words -= chunk.capacity();
        chunk
    }

    /// The reader's turn at the ring: `read` fills an empty chunk (whole records, in order), which
    /// is added to the backlog before another reader of the ring may start. Returns what `read`
    /// returned.
    pub fn read_into<R>(&self, read: impl FnOnce(&mut Chunk) -> R) -> R {
        let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunk = self.empty_chunk();
        let got = read(&mut chunk);
        self.push(chunk);
        got
    }

    /// The books thread's look at the ring in the middle of a chunk: `read` fills an empty chunk,
    /// added to the backlog after those it holds, as the reader's are. Skipped (`read` is not
    /// called) while the reader holds the ring, which it is draining then, or while the backlog
    /// is at its bound, which only the books thread itself would bring down. Returns whether
    /// `read` was called.
    pub fn top_up(&self, read: impl FnOnce(&mut Chunk)) -> bool {
        let _reading = match self.reading.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if self.lock().held >= self.max_words {
            return false;
        }
        let mut chunk = self.empty_chunk();
        read(&mut chunk);
        self.add(self.lock(), chunk);
        true
    }

    /// The books thread's next chunk: the backlog's oldest, or, when the backlog is empty and not
    /// closed, what `read` reads from the ring into an empty chunk (Idle if nothing). Never waits
    /// for a chunk; a reader adding one waits only for `read` to end.
    pub fn next(&self, read: impl FnOnce(&mut Chunk)) -> Next {
        if let Some(next) = self.take_oldest() {
            return next;
        }
        let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        // The reader may have added a chunk before this thread took the ring: it is older.
        if let Some(next) = self.take_oldest() {
            return next;
        }
        let mut chunk = self.empty_chunk();
        read(&mut chunk);
        if chunk.is_empty() {
            self.recycle(chunk);
            return Next::Idle;
        }
        Next::Chunk(chunk)
    }

    /// The oldest chunk, or Closed, or None when the backlog is empty and open.
    fn take_oldest(&self) -> Option<Next> {
        let mut state = self.lock();
        if let Some(chunk) = state.chunks.pop_front() {
            state.held -= chunk.capacity();
            self.changed.notify_all();
            return Some(Next::Chunk(chunk));
        }
        state.closed.then_some(Next::Closed)
    }

    /// Waits up to `timeout` for a chunk or the close (the books thread, after `next` was Idle).
    pub fn wait(&self, timeout: Duration) {
        let state = self.lock();
        if state.chunks.is_empty() && !state.closed {
            drop(self.changed.wait_timeout(state, timeout).unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Adds `chunk` (the reader, holding `reading`), first waiting while the chunks held take
    /// `max_words` or more; an empty chunk is kept for reuse.
    fn push(&self, chunk: Chunk) {
        let mut state = self.lock();
        while !chunk.is_empty() && state.held >= self.max_words && !state.closed {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        self.add(state, chunk);
    }

    /// Adds `chunk` after the chunks held (an empty one is kept for reuse).
    fn add(&self, mut state: MutexGuard<'_, State>, chunk: Chunk) {
        if chunk.is_empty() {
            self.keep_spare(&mut state, chunk);
            return;
        }
        state.held += chunk.capacity();
        state.chunks.push_back(chunk);
        self.changed.notify_all();
    }

    /// Keeps an emptied chunk for reuse if it fits under the bound beside the chunks held and
    /// the spares; frees it otherwise.
    fn keep_spare(&self, state: &mut State, chunk: Chunk) {
        if state.held + state.spare_words + chunk.capacity() <= self.max_words {
            state.spare_words += chunk.capacity();
            state.spare.push(chunk);
        }
    }

    /// The oldest chunk (the books thread), waiting for one; None once the backlog is closed
    /// and empty.
    pub fn pop(&self) -> Option<Chunk> {
        let mut state = self.lock();
        loop {
            if let Some(chunk) = state.chunks.pop_front() {
                state.held -= chunk.capacity();
                self.changed.notify_all();
                return Some(chunk);
            }
            if state.closed {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives back a chunk the books thread applied.
    pub fn recycle(&self, mut chunk: Chunk) {
        chunk.clear();
        self.keep_spare(&mut self.lock(), chunk);
    }

    /// No more chunks will come: `pop` returns those still held, then None.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Whether no chunk is held now.
    pub fn is_empty(&self) -> bool {
        self.lock().chunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn chunks_come_out_in_order_and_the_rest_after_close() {
        let backlog = Backlog::new(1 << 20);
        for n in 1..=3u64 {
            let mut chunk = backlog.empty_chunk();
            chunk.extend([n, n]);
            backlog.push(chunk);
        }
        // An empty chunk is not held: the books never see it (`chunk[0]` below).
        backlog.push(Vec::new());
        backlog.close();
        let mut seen = Vec::new();
        while let Some(chunk) = backlog.pop() {
            seen.push(chunk[0]);
            backlog.recycle(chunk);
        }
        assert_eq!(seen, vec![1, 2, 3]);
        let reused = backlog.empty_chunk();
        assert!(reused.is_empty() && reused.capacity() >= 2, "an applied chunk is reused");
    }

    #[test]
    fn a_reader_past_the_bound_waits_until_the_books_take_a_chunk() {
        let backlog = Backlog::new(4);
        backlog.push(vec![1; 4]);
        let pushed = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                backlog.push(vec![2; 4]);
                pushed.store(true, Ordering::SeqCst);
            });
            // The second push cannot land while the first chunk is held: it lands only once the
            // books take it, and then after it.
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!pushed.load(Ordering::SeqCst));
            assert_eq!(backlog.pop(), Some(vec![1; 4]));
        });
        assert!(pushed.load(Ordering::SeqCst));
        assert_eq!(backlog.pop(), Some(vec![2; 4]));
    }

    #[test]
    fn the_books_thread_waits_for_a_chunk_or_the_close() {
        let backlog = Backlog::new(16);
        std::thread::scope(|s| {
            let books = s.spawn(|| {
                let mut got = Vec::new();
                while let Some(chunk) = backlog.pop() {
                    got.extend(chunk);
                }
                got
            });
            backlog.push(vec![7]);
            backlog.close();
            assert_eq!(books.join().unwrap(), vec![7]);
        });
    }

    #[test]
    fn the_books_thread_reads_the_ring_itself_only_when_the_backlog_is_empty() {
        let backlog = Backlog::new(16);
        backlog.read_into(|chunk| chunk.push(1));
        let mut read = false;
        assert_eq!(backlog.next(|_| read = true), Next::Chunk(vec![1]));
        assert!(!read, "the backlog's records are older than the ring's");
        assert_eq!(backlog.next(|chunk| chunk.push(2)), Next::Chunk(vec![2]));
        assert_eq!(backlog.next(|_| {}), Next::Idle);
        backlog.close();
        assert_eq!(backlog.next(|_| read = true), Next::Closed);
        assert!(!read, "nothing is read once the reader closed the backlog");
    }

    #[test]
    fn what_the_reader_holds_when_the_books_thread_comes_to_the_ring_is_applied_first() {
        let backlog = Backlog::new(16);
        let reading = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                backlog.read_into(|chunk| {
                    reading.store(true, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    chunk.push(1);
                })
            });
            while !reading.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // The backlog looked empty when the books thread came; the reader's chunk, read from
            // the ring first, still comes before anything the books thread would read.
            assert_eq!(backlog.next(|chunk| chunk.push(2)), Next::Chunk(vec![1]));
        });
        assert_eq!(backlog.next(|chunk| chunk.push(2)), Next::Chunk(vec![2]));
    }

    fn chunk_of(capacity: usize, words: &[u64]) -> Chunk {
        let mut chunk = Vec::with_capacity(capacity);
        chunk.extend_from_slice(words);
        chunk
    }

    /// The books thread's top-up lands after what the backlog holds; it is skipped, without
    /// waiting, while the reader holds the ring or the backlog is at its bound.
    #[test]
    fn a_top_up_comes_after_the_backlog_and_never_waits() {
        let backlog = Backlog::new(8);
        backlog.read_into(|chunk| *chunk = chunk_of(4, &[1]));
        assert!(backlog.top_up(|chunk| *chunk = chunk_of(2, &[2])));
        assert!(backlog.top_up(|_| {}), "an empty read adds nothing");
        assert!(backlog.top_up(|chunk| *chunk = chunk_of(2, &[3, 3])));
        assert!(!backlog.top_up(|_| panic!("read at the bound")), "the chunks held take 8 words");
        assert_eq!(backlog.pop(), Some(vec![1]));
        let reading = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                backlog.read_into(|chunk| {
                    reading.store(true, Ordering::SeqCst);
                    while !done.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    chunk.push(4);
                })
            });
            while !reading.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            assert!(!backlog.top_up(|_| panic!("read while the reader holds the ring")));
            done.store(true, Ordering::SeqCst);
        });
        for chunk in [vec![2], vec![3, 3], vec![4]] {
            assert_eq!(backlog.next(|_| panic!("the ring read with chunks held")), Next::Chunk(chunk));
        }
    }

    /// The bound is on memory: a chunk counts by its capacity, and an applied chunk is kept for
    /// reuse only while it fits under the bound beside the chunks held and the other spares.
    #[test]
    fn chunks_held_and_spare_stay_under_the_bound() {
        let backlog = Backlog::new(8);
        backlog.push(chunk_of(8, &[1]));
        assert!(!backlog.top_up(|_| panic!("read at the bound")), "one word in a chunk of 8 fills 8");
        let first = backlog.pop().unwrap();
        backlog.push(chunk_of(8, &[2]));
        backlog.recycle(first);
        assert_eq!(backlog.empty_chunk().capacity(), 0, "no spare past the bound: freed");
        let second = backlog.pop().unwrap();
        backlog.recycle(second);
        assert_eq!(backlog.empty_chunk().capacity(), 8, "kept for reuse under the bound");
    }
}
