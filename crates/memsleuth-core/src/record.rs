//! The records the profiled process streams to the sink that keeps the books (docs/design.md,
//! "The books live in the sink"): everything the ledger is told, in the order it happened.
//!
//! A record is a run of 64-bit words. The first, the header, holds the kind (8 bits), flags
//! (8 bits), the record's length in words (16 bits) and the producing thread's id (32 bits); it
//! is never zero, which is how a ring tells a written record from space not yet written.

use crate::causes::OsReading;

/// Kinds, in the header's low byte. 0 is never a kind: a zero header is an unwritten record.
mod kind {
    pub const ALLOC: u8 = 1;
    pub const FREE: u8 = 2;
    pub const REALLOC_BEGIN: u8 = 3;
    pub const REALLOC_END: u8 = 4;
    pub const ARENA: u8 = 5;
    pub const DISOWN: u8 = 6;
    pub const QUIET_BEGIN: u8 = 7;
    pub const QUIET_END: u8 = 8;
    pub const GC_START: u8 = 9;
    pub const GC_STOP: u8 = 10;
    pub const REGISTER: u8 = 11;
    pub const ENTER: u8 = 12;
    pub const LEAVE: u8 = 13;
    pub const GEN_NEW: u8 = 14;
    pub const RESUME: u8 = 15;
    pub const SUSPEND: u8 = 16;
    pub const GEN_DROP: u8 = 17;
    pub const LINE: u8 = 18;
    pub const RETURN: u8 = 19;
    pub const REQUEST: u8 = 20;
    pub const EXIT: u8 = 21;
}

/// Header flags.
const RAW: u8 = 1;
const HAS_READING: u8 = 2;
const MALLOC_ASKED: u8 = 4;
const MAPPED: u8 = 8;

/// Words of a reading: the seven figures of `OsReading`.
const READING_WORDS: usize = 7;

/// An RSS reading the profiled process took of itself, and whether glibc's heap figures in it
/// are fresh (asked of mallinfo2 for this reading) or to be carried forward by the sink from the
/// last fresh ones (docs/design.md, Causes: readings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub os: OsReading,
    pub malloc_asked: bool,
}

/// What the sink is asked for: the answer goes back on the request's reply channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The JSON report of everything so far, or of the functions with these code objects only;
    /// `rss_peak` is the process's RSS high-water mark.
    Json {
        python_version: String,
        argv: Option<Vec<String>>,
        selection: Option<String>,
        rss_peak: u64,
        codes: Option<Vec<u64>>,
    },
    /// The text table of the function with this code object.
    Text { precision: u32, code: u64, min_bytes: u64 },
    /// Live tracked blocks, the books' own bytes and the live tracked bytes.
    Counters,
}

/// An allocation, a free, or a line event without a reading: nearly every record, and read in
/// place rather than built into a `Record` (whose size, set by its largest variants, had the
/// sink copy and drop 120 bytes for each record of two or three words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotRecord {
    Alloc { addr: u64, size: u64, raw: bool },
    Free { addr: u64, raw: bool },
    Line { code: u64, lineno: u32 },
}

impl HotRecord {
    /// The thread and record in `words` (one whole record, header first), if it is one of these.
    #[inline(always)]
    pub fn decode(words: &[u64]) -> Option<(u32, HotRecord)> {
        let (&head, payload) = words.split_first()?;
        let flags = (head >> 8) as u8;
        let raw = flags & RAW != 0;
        let record = match (head as u8, payload) {
            (kind::ALLOC, &[addr, size]) => HotRecord::Alloc { addr, size, raw },
            (kind::FREE, &[addr]) => HotRecord::Free { addr, raw },
            (kind::LINE, &[code, lineno]) if flags & HAS_READING == 0 => {
                HotRecord::Line { code, lineno: lineno as u32 }
            }
            _ => return None,
        };
        (header_words(head) == words.len()).then_some(((head >> 32) as u32, record))
    }
}

impl From<HotRecord> for Record {
    fn from(record: HotRecord) -> Record {
        match record {
            HotRecord::Alloc { addr, size, raw } => Record::Alloc { addr, size, raw },
            HotRecord::Free { addr, raw } => Record::Free { addr, raw },
            HotRecord::Line { code, lineno } => Record::Line { code, lineno, reading: None },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Alloc {
        addr: u64,
        size: u64,
        raw: bool,
    },
    Free {
        addr: u64,
        raw: bool,
    },
    /// `realloc(old, ...)` is about to run: `old` is forgotten first.
    ReallocBegin {
        old: u64,
        raw: bool,
    },
    /// It returned `new` (0 if it failed, leaving `old` in place).
    ReallocEnd {
        old: u64,
        new: u64,
        size: u64,
        raw: bool,
    },
    Arena {
        addr: u64,
        size: u64,
        mapped: bool,
    },
    /// A block the thread allocated lately is the profiler's.
    Disown {
        addr: u64,
    },
    QuietBegin,
    QuietEnd,
    GcStart,
    GcStop,
    /// A profiled function; functions are numbered in the order they are registered.
    Register {
        code: u64,
        first_lineno: u32,
        name: String,
        module: String,
        filename: String,
        source: Vec<String>,
    },
    /// A profiled call starts; a call inside another profiled call has a reading only where
    /// one fell due (docs/design.md, Readings), as a line boundary does.
    Enter {
        func: u32,
        reading: Option<Reading>,
    },
    Leave {
        reading: Option<Reading>,
    },
    /// A generator or coroutine frame that has not started yet, numbered by the producer.
    GenNew {
        gen: u64,
        func: u32,
    },
    Resume {
        gen: u64,
        reading: Reading,
    },
    Suspend {
        gen: u64,
        reading: Reading,
    },
    /// The frame's driver is gone: the sink forgets its saved state.
    GenDrop {
        gen: u64,
    },
    Line {
        code: u64,
        lineno: u32,
        reading: Option<Reading>,
    },
    Return {
        code: u64,
        reading: Option<Reading>,
    },
    Request {
        token: u64,
        request: Request,
    },
    /// The program ended normally with this status.
    Exit {
        status: i32,
    },
}

/// Where a record's words are built: inline for the fixed-size ones the hooks and the tracer
/// send, so the hot path never allocates.
pub struct Words {
    inline: [u64; INLINE_WORDS],
    heap: Vec<u64>,
    len: usize,
}

const INLINE_WORDS: usize = 12;

impl Default for Words {
    fn default() -> Self {
        Self::new()
    }
}

impl Words {
    pub fn new() -> Self {
        Words { inline: [0; INLINE_WORDS], heap: Vec::new(), len: 0 }
    }

    #[inline(always)]
    fn push(&mut self, word: u64) {
        if self.len < INLINE_WORDS && self.heap.is_empty() {
            self.inline[self.len] = word;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.inline[..self.len]);
            }
            self.heap.push(word);
        }
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[u64] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }

    fn set_header(&mut self, header: u64) {
        if self.heap.is_empty() {
            self.inline[0] = header;
        } else {
            self.heap[0] = header;
        }
    }

    fn push_str(&mut self, s: &str) {
        self.push(s.len() as u64);
        for chunk in s.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.push(u64::from_le_bytes(word));
        }
    }

    fn push_reading(&mut self, r: &Reading) {
        let os = &r.os;
        for w in [
            os.rss_anon,
            os.rss_file,
            os.malloc_in_use,
            os.malloc_mmapped,
            os.malloc_arena,
            os.unresident,
            os.profiler_bytes,
        ] {
            self.push(w);
        }
    }
}

/// The longest record, in words (128 KiB; the header's length field could say more): a ring
/// takes records up to half its size, so every ring of 256 KiB or more takes every record
/// (docs/design.md, "The books live in the sink").
pub const MAX_WORDS: usize = (1 << 14) - 1;

/// The header of a record of `words` words.
#[inline(always)]
pub fn header(kind: u8, flags: u8, words: usize, thread: u32) -> u64 {
    u64::from(kind) | u64::from(flags) << 8 | (words as u64) << 16 | u64::from(thread) << 32
}

/// A record's length in words, from its header.
#[inline(always)]
pub fn header_words(header: u64) -> usize {
    (header >> 16 & 0xffff) as usize
}

/// An `Alloc` record's words, built in place for the allocation hook (the same as `encode`).
#[inline(always)]
pub fn alloc_words(thread: u32, addr: u64, size: u64, raw: bool) -> [u64; 3] {
    [header(kind::ALLOC, if raw { RAW } else { 0 }, 3, thread), addr, size]
}

/// A `Free` record's words, built in place for the free hook (the same as `encode`).
#[inline(always)]
pub fn free_words(thread: u32, addr: u64, raw: bool) -> [u64; 2] {
    [header(kind::FREE, if raw { RAW } else { 0 }, 2, thread), addr]
}

/// A `Line` record's words without a reading, built in place for the line event.
#[inline(always)]
pub fn line_words(thread: u32, code: u64, lineno: u32) -> [u64; 3] {
    [header(kind::LINE, 0, 3, thread), code, u64::from(lineno)]
}

impl Record {
    /// The record's words, sent by `thread`. Strings that would make the record longer than
    /// MAX_WORDS are cut (only a registered function's source could be that long).
    pub fn encode(&self, thread: u32) -> Words {
        let mut w = Words::new();
        self.encode_into(thread, &mut w);
        w
    }

    /// As `encode`, into `w` (empty), which the producer keeps on its stack: `Words` returned by
    /// value was copied out in 16-byte pieces just after being written in 8-byte ones, a stall
    /// (failed store-to-load forwarding) that was most of encoding a call's entry or exit.
    pub fn encode_into(&self, thread: u32, w: &mut Words) {
        debug_assert_eq!(w.len, 0);
        w.push(0);
        let (kind, flags) = match self {
            Record::Alloc { addr, size, raw } => {
                w.push(*addr);
                w.push(*size);
                (kind::ALLOC, if *raw { RAW } else { 0 })
            }
            Record::Free { addr, raw } => {
                w.push(*addr);
                (kind::FREE, if *raw { RAW } else { 0 })
            }
            Record::ReallocBegin { old, raw } => {
                w.push(*old);
                (kind::REALLOC_BEGIN, if *raw { RAW } else { 0 })
            }
            Record::ReallocEnd { old, new, size, raw } => {
                w.push(*old);
                w.push(*new);
                w.push(*size);
                (kind::REALLOC_END, if *raw { RAW } else { 0 })
            }
            Record::Arena { addr, size, mapped } => {
                w.push(*addr);
                w.push(*size);
                (kind::ARENA, if *mapped { MAPPED } else { 0 })
            }
            Record::Disown { addr } => {
                w.push(*addr);
                (kind::DISOWN, 0)
            }
            Record::QuietBegin => (kind::QUIET_BEGIN, 0),
            Record::QuietEnd => (kind::QUIET_END, 0),
            Record::GcStart => (kind::GC_START, 0),
            Record::GcStop => (kind::GC_STOP, 0),
            Record::Register { code, first_lineno, name, module, filename, source } => {
                w.push(*code);
                w.push(u64::from(*first_lineno));
                for s in [name, module, filename] {
                    w.push_str(s);
                }
                // Lines are kept while they fit: a cut source shows as unavailable lines.
                let budget = MAX_WORDS.saturating_sub(w.len + 1);
                let fitting = source
                    .iter()
                    .scan(0usize, |used, line| {
                        *used += 1 + line.len().div_ceil(8);
                        (*used <= budget).then_some(line)
                    })
                    .count();
                w.push(fitting as u64);
                for line in &source[..fitting] {
                    w.push_str(line);
                }
                (kind::REGISTER, 0)
            }
            Record::Enter { func, reading } => {
                w.push(u64::from(*func));
                if let Some(r) = reading {
                    w.push_reading(r);
                }
                (kind::ENTER, reading_flags(reading.as_ref()))
            }
            Record::Leave { reading } => {
                if let Some(r) = reading {
                    w.push_reading(r);
                }
                (kind::LEAVE, reading_flags(reading.as_ref()))
            }
            Record::GenNew { gen, func } => {
                w.push(*gen);
                w.push(u64::from(*func));
                (kind::GEN_NEW, 0)
            }
            Record::Resume { gen, reading } => {
                w.push(*gen);
                w.push_reading(reading);
                (kind::RESUME, reading_flags(Some(reading)))
            }
            Record::Suspend { gen, reading } => {
                w.push(*gen);
                w.push_reading(reading);
                (kind::SUSPEND, reading_flags(Some(reading)))
            }
            Record::GenDrop { gen } => {
                w.push(*gen);
                (kind::GEN_DROP, 0)
            }
            Record::Line { code, lineno, reading } => {
                w.push(*code);
                w.push(u64::from(*lineno));
                if let Some(r) = reading {
                    w.push_reading(r);
                }
                (kind::LINE, reading_flags(reading.as_ref()))
            }
            Record::Return { code, reading } => {
                w.push(*code);
                if let Some(r) = reading {
                    w.push_reading(r);
                }
                (kind::RETURN, reading_flags(reading.as_ref()))
            }
            Record::Request { token, request } => {
                w.push(*token);
                encode_request(w, request);
                (kind::REQUEST, 0)
            }
            Record::Exit { status } => {
                w.push(*status as u32 as u64);
                (kind::EXIT, 0)
            }
        };
        let len = w.len;
        w.set_header(header(kind, flags, len, thread));
    }

    /// The thread and record in `words` (one whole record, header first); None if they are not
    /// a record this version writes.
    pub fn decode(words: &[u64]) -> Option<(u32, Record)> {
        if let Some((thread, record)) = HotRecord::decode(words) {
            return Some((thread, record.into()));
        }
        let head = *words.first()?;
        if header_words(head) != words.len() {
            return None;
        }
        let (kind, flags, thread) = (head as u8, (head >> 8) as u8, (head >> 32) as u32);
        let mut r = Reader { words, at: 1 };
        let raw = flags & RAW != 0;
        let record = match kind {
            kind::REALLOC_BEGIN => Record::ReallocBegin { old: r.word()?, raw },
            kind::REALLOC_END => Record::ReallocEnd { old: r.word()?, new: r.word()?, size: r.word()?, raw },
            kind::ARENA => Record::Arena { addr: r.word()?, size: r.word()?, mapped: flags & MAPPED != 0 },
            kind::DISOWN => Record::Disown { addr: r.word()? },
            kind::QUIET_BEGIN => Record::QuietBegin,
            kind::QUIET_END => Record::QuietEnd,
            kind::GC_START => Record::GcStart,
            kind::GC_STOP => Record::GcStop,
            kind::REGISTER => {
                let (code, first_lineno) = (r.word()?, r.word()? as u32);
                let (name, module, filename) = (r.string()?, r.string()?, r.string()?);
                let count = r.word()? as usize;
                let source = (0..count).map(|_| r.string()).collect::<Option<Vec<_>>>()?;
                Record::Register { code, first_lineno, name, module, filename, source }
            }
            kind::ENTER => Record::Enter { func: r.word()? as u32, reading: r.optional_reading(flags)? },
            kind::LEAVE => Record::Leave { reading: r.optional_reading(flags)? },
            kind::GEN_NEW => Record::GenNew { gen: r.word()?, func: r.word()? as u32 },
            kind::RESUME => Record::Resume { gen: r.word()?, reading: r.reading(flags)? },
            kind::SUSPEND => Record::Suspend { gen: r.word()?, reading: r.reading(flags)? },
            kind::GEN_DROP => Record::GenDrop { gen: r.word()? },
            kind::LINE => {
                Record::Line { code: r.word()?, lineno: r.word()? as u32, reading: r.optional_reading(flags)? }
            }
            kind::RETURN => Record::Return { code: r.word()?, reading: r.optional_reading(flags)? },
            kind::REQUEST => Record::Request { token: r.word()?, request: decode_request(&mut r)? },
            kind::EXIT => Record::Exit { status: r.word()? as u32 as i32 },
            _ => return None,
        };
        (r.at == words.len()).then_some((thread, record))
    }
}

fn reading_flags(reading: Option<&Reading>) -> u8 {
    match reading {
        Some(r) => HAS_READING | if r.malloc_asked { MALLOC_ASKED } else { 0 },
        None => 0,
    }
}

fn encode_request(w: &mut Words, request: &Request) {
    match request {
        Request::Json { python_version, argv, selection, rss_peak, codes } => {
            w.push(0);
            w.push(*rss_peak);
            match codes {
                Some(codes) => {
                    w.push(codes.len() as u64 + 1);
                    for code in codes {
                        w.push(*code);
                    }
                }
                None => w.push(0),
            }
            w.push_str(python_version);
            match argv {
                Some(args) => {
                    // Arguments are kept while they fit (with the selection after them): a
                    // record longer than MAX_WORDS would not fit in the ring.
                    let after = 2 + selection.as_ref().map_or(0, |s| 1 + s.len().div_ceil(8));
                    let budget = MAX_WORDS.saturating_sub(w.len + 1 + after);
                    let fitting = args
                        .iter()
                        .scan(0usize, |used, a| {
                            *used += 1 + a.len().div_ceil(8);
                            (*used <= budget).then_some(a)
                        })
                        .count();
                    w.push(fitting as u64 + 1);
                    for a in &args[..fitting] {
                        w.push_str(a);
                    }
                }
                None => w.push(0),
            }
            match selection {
                Some(s) => {
                    w.push(1);
                    w.push_str(s);
                }
                None => w.push(0),
            }
        }
        Request::Text { precision, code, min_bytes } => {
            w.push(1);
            w.push(u64::from(*precision));
            w.push(*code);
            w.push(*min_bytes);
        }
        Request::Counters => w.push(2),
    }
}

fn decode_request(r: &mut Reader<'_>) -> Option<Request> {
    Some(match r.word()? {
        0 => {
            let rss_peak = r.word()?;
            let codes = match r.word()? {
                0 => None,
                n => Some((1..n).map(|_| r.word()).collect::<Option<Vec<_>>>()?),
            };
            let python_version = r.string()?;
            let argv = match r.word()? {
                0 => None,
                n => Some((1..n).map(|_| r.string()).collect::<Option<Vec<_>>>()?),
            };
            let selection = match r.word()? {
                0 => None,
                _ => Some(r.string()?),
            };
            Request::Json { python_version, argv, selection, rss_peak, codes }
        }
        1 => Request::Text { precision: r.word()? as u32, code: r.word()?, min_bytes: r.word()? },
        2 => Request::Counters,
        _ => return None,
    })
}

struct Reader<'a> {
    words: &'a [u64],
    at: usize,
}

impl Reader<'_> {
    fn word(&mut self) -> Option<u64> {
        let w = *self.words.get(self.at)?;
        self.at += 1;
        Some(w)
    }

    fn string(&mut self) -> Option<String> {
        let len = self.word()? as usize;
        let words = len.div_ceil(8);
        let bytes: Vec<u8> =
            self.words.get(self.at..self.at + words)?.iter().flat_map(|w| w.to_le_bytes()).take(len).collect();
        self.at += words;
        String::from_utf8(bytes).ok()
    }

    fn reading(&mut self, flags: u8) -> Option<Reading> {
        if flags & HAS_READING == 0 {
            return None;
        }
        let w: [u64; READING_WORDS] = self.words.get(self.at..self.at + READING_WORDS)?.try_into().ok()?;
        self.at += READING_WORDS;
        let os = OsReading {
            rss_anon: w[0],
            rss_file: w[1],
            malloc_in_use: w[2],
            malloc_mmapped: w[3],
            malloc_arena: w[4],
            unresident: w[5],
            profiler_bytes: w[6],
        };
        Some(Reading { os, malloc_asked: flags & MALLOC_ASKED != 0 })
    }

    /// A reading the record may carry: Some(None) when it has none, None when it is malformed.
    fn optional_reading(&mut self, flags: u8) -> Option<Option<Reading>> {
        if flags & HAS_READING == 0 {
            return Some(None);
        }
        self.reading(flags).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(n: u64, asked: bool) -> Reading {
        let os = OsReading {
            rss_anon: n,
            rss_file: n + 1,
            malloc_in_use: n + 2,
            malloc_mmapped: n + 3,
            malloc_arena: n + 4,
            unresident: n + 5,
            profiler_bytes: n + 6,
        };
        Reading { os, malloc_asked: asked }
    }

    fn every_kind() -> Vec<Record> {
        vec![
            Record::Alloc { addr: 0x7f00_0000_1230, size: 1 << 40, raw: true },
            Record::Alloc { addr: 16, size: 0, raw: false },
            Record::Free { addr: u64::MAX, raw: false },
            Record::ReallocBegin { old: 5, raw: true },
            Record::ReallocEnd { old: 5, new: 0, size: 9, raw: false },
            Record::Arena { addr: 1 << 30, size: 1 << 20, mapped: true },
            Record::Arena { addr: 1 << 30, size: 1 << 20, mapped: false },
            Record::Disown { addr: 77 },
            Record::QuietBegin,
            Record::QuietEnd,
            Record::GcStart,
            Record::GcStop,
            Record::Register {
                code: 99,
                first_lineno: 12,
                name: "f".into(),
                module: "mod.ule".into(),
                filename: "/tmp/é.py".into(),
                source: vec!["def f():".into(), "".into(), "    return 'twelve bytes'".into()],
            },
            Record::Enter { func: 3, reading: Some(reading(100, true)) },
            Record::Leave { reading: Some(reading(200, false)) },
            Record::Enter { func: 4, reading: None },
            Record::Leave { reading: None },
            Record::GenNew { gen: 1 << 50, func: 7 },
            Record::Resume { gen: 4, reading: reading(1, false) },
            Record::Suspend { gen: 4, reading: reading(2, true) },
            Record::GenDrop { gen: 4 },
            Record::Line { code: 8, lineno: 40, reading: None },
            Record::Line { code: 8, lineno: 41, reading: Some(reading(5, false)) },
            Record::Return { code: 8, reading: None },
            Record::Return { code: 8, reading: Some(reading(6, true)) },
            Record::Request {
                token: 3,
                request: Request::Json {
                    python_version: "3.12.1".into(),
                    argv: Some(vec!["prog.py".into(), "".into()]),
                    selection: None,
                    rss_peak: 1 << 33,
                    codes: Some(vec![1, 2, u64::MAX]),
                },
            },
            Record::Request {
                token: 4,
                request: Request::Json {
                    python_version: String::new(),
                    argv: Some(vec![]),
                    selection: Some("x".into()),
                    rss_peak: 0,
                    codes: Some(vec![]),
                },
            },
            Record::Request {
                token: 5,
                request: Request::Json {
                    python_version: String::new(),
                    argv: None,
                    selection: None,
                    rss_peak: 1,
                    codes: None,
                },
            },
            Record::Request { token: 6, request: Request::Text { precision: 20, code: 1234, min_bytes: 64 } },
            Record::Request { token: 7, request: Request::Counters },
            Record::Exit { status: -3 },
        ]
    }

    #[test]
    fn every_record_comes_back_as_it_was_sent() {
        for (i, record) in every_kind().into_iter().enumerate() {
            let thread = i as u32 * 7919;
            let words = record.encode(thread);
            assert_ne!(words.as_slice()[0], 0, "{record:?}: a header is never zero");
            assert_eq!(header_words(words.as_slice()[0]), words.as_slice().len());
            assert_eq!(Record::decode(words.as_slice()), Some((thread, record.clone())), "{record:?}");
        }
    }

    #[test]
    fn the_hooks_words_built_in_place_are_the_encoded_records() {
        for raw in [false, true] {
            let alloc = Record::Alloc { addr: 0x7f12_3456_7890, size: 1 << 35, raw };
            assert_eq!(alloc_words(9, 0x7f12_3456_7890, 1 << 35, raw), alloc.encode(9).as_slice());
            let free = Record::Free { addr: 0x10, raw };
            assert_eq!(free_words(u32::MAX, 0x10, raw), free.encode(u32::MAX).as_slice());
        }
        let line = Record::Line { code: 0x7f00_0000_0040, lineno: 1 << 20, reading: None };
        assert_eq!(line_words(3, 0x7f00_0000_0040, 1 << 20), line.encode(3).as_slice());
    }

    #[test]
    fn the_hooks_records_fit_inline() {
        for record in [
            Record::Alloc { addr: 1, size: 2, raw: true },
            Record::Line { code: 1, lineno: 2, reading: Some(reading(1, true)) },
            Record::Resume { gen: 1, reading: reading(1, true) },
        ] {
            let words = record.encode(1);
            assert!(words.heap.is_empty(), "{record:?} went to the heap");
        }
    }

    #[test]
    fn truncated_or_padded_words_are_not_a_record() {
        let words = Record::Alloc { addr: 1, size: 2, raw: false }.encode(1);
        let w = words.as_slice();
        assert_eq!(Record::decode(&w[..2]), None);
        let mut longer = w.to_vec();
        longer.push(0);
        assert_eq!(Record::decode(&longer), None);
        assert_eq!(Record::decode(&[header(200, 0, 1, 0)]), None, "an unknown kind");
    }

    #[test]
    fn an_argv_too_long_for_one_record_is_cut_at_an_argument() {
        let argv: Vec<String> = (0..400).map(|i| format!("{i:0>400}")).collect();
        let request = Request::Json {
            python_version: "3.12.1".into(),
            argv: Some(argv.clone()),
            selection: Some("profiling everything".into()),
            rss_peak: 1,
            codes: None,
        };
        let words = Record::Request { token: 1, request }.encode(0);
        assert!(words.as_slice().len() <= MAX_WORDS);
        let Some((_, Record::Request { request: Request::Json { argv: Some(kept), selection, .. }, .. })) =
            Record::decode(words.as_slice())
        else {
            panic!("not decoded")
        };
        assert!(!kept.is_empty() && kept.len() < argv.len());
        assert_eq!(kept[..], argv[..kept.len()]);
        assert_eq!(selection.as_deref(), Some("profiling everything"));
    }

    #[test]
    fn a_source_too_long_for_one_record_is_cut_at_a_line() {
        let line = "x".repeat(800);
        let source = vec![line; 1000];
        let record = Record::Register {
            code: 1,
            first_lineno: 1,
            name: "f".into(),
            module: "m".into(),
            filename: "f.py".into(),
            source: source.clone(),
        };
        let words = record.encode(0);
        assert!(words.as_slice().len() <= MAX_WORDS);
        let Some((_, Record::Register { source: kept, .. })) = Record::decode(words.as_slice()) else {
            panic!("not decoded")
        };
        assert!(!kept.is_empty() && kept.len() < source.len());
        assert_eq!(kept[..], source[..kept.len()]);
    }
}
