//! Why RSS moved (docs/design.md, Causes): each line's RSS change split into causes from exact
//! counters and from readings taken at the same moments as RSS, and a sentence for surprises.

use serde::{Deserialize, Serialize};

use crate::report::human_bytes;

/// What the platform tells at a reading: RSS split by kind, glibc's view of its heap, the
/// reserved-but-not-resident bytes of the large tracked blocks, and memsleuth's own heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OsReading {
    /// RssAnon (statm resident - shared).
    pub rss_anon: u64,
    /// RssFile + RssShmem (statm shared).
    pub rss_file: u64,
    /// mallinfo2 uordblks: bytes in use in glibc's heap arenas.
    pub malloc_in_use: u64,
    /// mallinfo2 hblkhd: bytes in chunks glibc served with mmap.
    pub malloc_mmapped: u64,
    /// mallinfo2 arena: bytes glibc obtained for its heap arenas.
    pub malloc_arena: u64,
    /// Bytes of large tracked blocks and arenas that are reserved but not resident.
    pub unresident: u64,
    /// Bytes memsleuth itself has allocated (its tables, touched as soon as they are made),
    /// from a counting Rust allocator.
    pub profiler_bytes: u64,
}

impl OsReading {
    pub fn rss(&self) -> u64 {
        self.rss_anon + self.rss_file
    }
}

/// RSS alone, for tests and platforms where nothing else is known.
impl From<u64> for OsReading {
    fn from(rss: u64) -> Self {
        OsReading { rss_anon: rss, ..Default::default() }
    }
}

impl From<i32> for OsReading {
    fn from(rss: i32) -> Self {
        OsReading::from(rss.max(0) as u64)
    }
}

/// A reading together with the exact process-wide counters at the same moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub os: OsReading,
    /// Live tracked bytes in the whole process (T).
    pub tracked_live: u64,
    /// Live tracked bytes that glibc serves (raw domain, and pymalloc's large requests).
    pub glibc_live: u64,
    /// Bytes of pymalloc arenas mapped, exact from the arena hook.
    pub arena_bytes: u64,
    /// The reading thread's own cumulative tracked net (allocated minus freed): what of the
    /// change in `tracked_live` between two of its samples was its own.
    pub own_net: i64,
}

/// Declares `Causes` from one list of names: the struct (whose field order is the JSON's) and
/// the sums over every cause.
macro_rules! causes {
    ($($name:ident),+ $(,)?) => {
        /// The causes of a line's RSS change, in bytes; they sum to it exactly.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Causes {
            $(pub $name: i64,)+
        }

        impl Causes {
            pub fn sum(&self) -> i64 {
                0 $(+ self.$name)+
            }

            pub fn add(&mut self, other: &Causes) {
                $(self.$name += other.$name;)+
            }
        }
    };
}

causes!(python, gc, other_threads, native, allocator, lazy, files, profiler, unexplained);

fn delta(start: u64, end: u64) -> i64 {
    end as i64 - start as i64
}

impl Causes {
    /// The decomposition of one execution: `net` and `gc_freed` are its exact tracked figures,
    /// `start` and `end` the samples of its thread its RSS change was measured between.
    ///
    /// Readings are skipped in hot loops, so the samples may also span neighbouring lines of the
    /// same thread; what those lines' blocks took from or gave to the allocators is the
    /// allocators' share here, never another thread's: `other_threads` is only the part of the
    /// tracked change the thread did not make itself.
    pub fn of_execution(start: &Sample, end: &Sample, net: i64, gc_freed: u64) -> Self {
        let rss_delta = delta(start.os.rss(), end.os.rss());
        let tracked = delta(start.tracked_live, end.tracked_live);
        let other_threads = tracked - (end.own_net - start.own_net);
        let profiler = delta(start.os.profiler_bytes, end.os.profiler_bytes);
        let glibc_used =
            delta(start.os.malloc_in_use + start.os.malloc_mmapped, end.os.malloc_in_use + end.os.malloc_mmapped);
        let native = glibc_used - delta(start.glibc_live, end.glibc_live) - profiler;
        let footprint = |s: &Sample| s.arena_bytes + s.os.malloc_arena + s.os.malloc_mmapped;
        let allocator = delta(footprint(start), footprint(end)) - net - other_threads - native - profiler;
        let mut causes = Causes {
            python: net + gc_freed as i64,
            gc: -(gc_freed as i64),
            other_threads,
            native,
            allocator,
            lazy: -delta(start.os.unresident, end.os.unresident),
            files: delta(start.os.rss_file, end.os.rss_file),
            profiler,
            unexplained: 0,
        };
        causes.unexplained = rss_delta - causes.sum();
        causes
    }

    /// Adds `of_execution(s, s, net, gc_freed)` for any sample `s`, without reading one: when
    /// no reading came between an execution's ends, only the exact figures move, and the
    /// allocators' share offsets them (the blocks came from, or went to, memory they held).
    pub fn add_unread(&mut self, net: i64, gc_freed: u64) {
        self.python += net + gc_freed as i64;
        self.gc -= gc_freed as i64;
        self.allocator -= net;
    }
}

/// Everything a note may cite about a line.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoteFacts {
    /// Executions (a function's totals: calls) the figures add up.
    pub hits: u64,
    pub rss_delta: i64,
    pub allocated: u64,
    pub freed: u64,
    pub gc_collections: u64,
    pub gc_freed: u64,
    pub arenas_mapped: u64,
    pub arenas_unmapped: u64,
    pub causes: Causes,
    /// The figures are a frame's teardown (after its return), not a line's.
    pub teardown: bool,
}

impl NoteFacts {
    /// What the note's figures are of.
    fn subject(&self) -> &'static str {
        if self.teardown {
            "the frame's teardown"
        } else {
            "this line"
        }
    }
}

/// A cause moving at least this much gets a note.
pub const NOTE_THRESHOLD: i64 = 1 << 20;

/// One plain-English sentence for a surprising line: RSS fell, or a cause other than Python's own
/// net moved by 1 MiB or more. None when nothing is surprising. The sentence explains the largest
/// movement first: the line's own Python objects when they account for the change, else the
/// cause that moved most (a collection that freed 1 MiB or more first of all: the allocators'
/// share is then what they kept of that memory).
pub fn note(f: &NoteFacts) -> Option<String> {
    let c = &f.causes;
    let others = [
        ("gc", c.gc),
        ("other_threads", c.other_threads),
        ("native", c.native),
        ("allocator", c.allocator),
        ("lazy", c.lazy),
        ("files", c.files),
        ("profiler", c.profiler),
        ("unexplained", c.unexplained),
    ];
    let largest = |except: &str| {
        others.into_iter().filter(|(n, _)| *n != except).max_by_key(|(_, v)| v.unsigned_abs()).unwrap_or(("", 0))
    };
    let (name, value) = if c.gc.abs() >= NOTE_THRESHOLD { ("gc", c.gc) } else { largest("") };
    if f.rss_delta >= 0 && value.abs() < NOTE_THRESHOLD {
        return None;
    }
    let b = |v: i64| human_bytes(v.abs());
    // Executions that overlapped other threads' work each saw those threads' movement: their
    // changes add up to more than RSS ever moved, so the sum is not called a rise or a fall.
    let rss = if f.hits > 1 && c.other_threads.abs() >= NOTE_THRESHOLD {
        format!(
            "the RSS changes seen by its {} executions add up to {}{} (they overlapped other threads' work, \
             and each counts what moved meanwhile)",
            f.hits,
            if f.rss_delta > 0 { "+" } else { "" },
            human_bytes(f.rss_delta)
        )
    } else if f.rss_delta < 0 {
        format!("RSS fell by {}", b(f.rss_delta))
    } else {
        format!("RSS rose by {}", b(f.rss_delta))
    };
    // Python's own net explains the change only if it moved the same way, accounts for most of
    // it and moved more than any other cause; a second cause of 1 MiB or more is then added.
    let python_explains = c.python.signum() == f.rss_delta.signum()
        && (f.rss_delta - c.python).abs() <= f.rss_delta.abs() / 2
        && c.python.unsigned_abs() >= value.unsigned_abs();
    if python_explains || value == 0 {
        let own = if f.rss_delta < 0 {
            format!(
                "{rss}: {} freed {} of Python objects (net {})",
                f.subject(),
                b(f.freed as i64),
                human_bytes(c.python)
            )
        } else {
            format!("{rss}: {} allocated and kept {} of Python objects", f.subject(), b(c.python))
        };
        let (second, v) = largest("");
        return Some(if v.abs() >= NOTE_THRESHOLD { format!("{own}; {}", clause(f, second, v)) } else { own });
    }
    Some(format!("{rss}: {}", clause(f, name, value)))
}

/// What cause `name` moving by `value` means, as a clause.
fn clause(f: &NoteFacts, name: &str, value: i64) -> String {
    let c = &f.causes;
    let b = |v: i64| human_bytes(v.abs());
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    match name {
        "gc" => format!(
            "the cyclic garbage collector ran {} time{} during {} and freed {} of unreachable cycles, \
             created wherever their last reference was dropped{}",
            f.gc_collections,
            plural(f.gc_collections),
            f.subject(),
            b(f.gc_freed as i64),
            if c.allocator >= NOTE_THRESHOLD {
                format!("; the allocators kept {} of the freed memory, so RSS did not fall by as much", b(c.allocator))
            } else {
                String::new()
            }
        ),
        "allocator" if value < 0 && f.arenas_unmapped > 0 && c.python <= 0 => format!(
            "pymalloc returned {} empty arena{} to the system ({} less held by the allocators) after blocks were freed",
            f.arenas_unmapped,
            plural(f.arenas_unmapped),
            b(value)
        ),
        "allocator" if value < 0 && c.python > 0 => format!(
            "{} of the new Python objects went into memory the allocators already held free (left by earlier \
             frees), so RSS did not grow by as much",
            b(value.max(-c.python))
        ),
        "allocator" if value < 0 && f.rss_delta < 0 => {
            format!("the allocators released {} of memory they held free (glibc trimmed or unmapped its heap)", b(value))
        }
        "allocator" if value < 0 => format!("the allocators hold {} less free memory: it was reused for new blocks", b(value)),
        "allocator" if c.python < 0 && f.freed as i64 * 2 >= value => format!(
            "Python freed {} but the allocators kept {} of it: the freed blocks sit in pymalloc arenas \
             or glibc heap pages that still hold live objects (fragmented), so the memory is not returned",
            b(f.freed as i64),
            b(value)
        ),
        "allocator" => format!(
            "the allocators grew their footprint by {} beyond the live blocks ({} new pymalloc arena{})",
            b(value),
            f.arenas_mapped,
            plural(f.arenas_mapped)
        ),
        "native" if value > 0 => format!("a C extension allocated {} outside Python's allocator (e.g. array buffers)", b(value)),
        "native" => format!("a C extension freed {} it had allocated outside Python's allocator", b(value)),
        "lazy" if value < 0 => format!(
            "{} was reserved but not yet written, so it is not resident yet (lazy paging); RSS grows where it is first written",
            b(value)
        ),
        "lazy" => format!("first writes brought {} of previously reserved memory into RSS", b(value)),
        "files" if value > 0 => {
            format!("{} of file-backed memory was mapped (an imported extension module or an mmapped file)", b(value))
        }
        "files" => format!("{} of file-backed memory was unmapped or dropped from RAM", b(value)),
        "other_threads" => format!(
            "other threads {} {} of tracked memory while {} ran",
            if value > 0 { "allocated" } else { "freed" },
            b(value),
            f.subject()
        ),
        "profiler" => format!("memsleuth's own tables changed by {}", human_bytes(value)),
        _ => format!("{} of the change has no tracked cause (interpreter internals, thread stacks, untracked mappings)", b(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sample(rss_anon: u64, tracked: u64, arenas: u64) -> Sample {
        Sample {
            os: OsReading { rss_anon, ..Default::default() },
            tracked_live: tracked,
            glibc_live: 0,
            arena_bytes: arenas,
            own_net: tracked as i64,
        }
    }

    /// A reading with something in every field the reconciliation splits.
    fn mixed_sample() -> Sample {
        Sample {
            os: OsReading {
                rss_anon: 50 * MIB,
                rss_file: 9 * MIB,
                malloc_in_use: 3 * MIB,
                malloc_mmapped: MIB,
                malloc_arena: 4 * MIB,
                profiler_bytes: MIB,
                ..Default::default()
            },
            tracked_live: 20 * MIB,
            glibc_live: 2 * MIB,
            arena_bytes: 12 * MIB,
            own_net: (20 * MIB) as i64,
        }
    }

    #[test]
    fn causes_always_sum_to_the_rss_change() {
        let start = mixed_sample();
        let end = Sample {
            os: OsReading {
                rss_anon: 130 * MIB,
                rss_file: 10 * MIB,
                malloc_in_use: 3 * MIB,
                malloc_mmapped: 81 * MIB,
                malloc_arena: 4 * MIB,
                profiler_bytes: MIB,
                ..Default::default()
            },
            tracked_live: 20 * MIB + 100,
            glibc_live: 2 * MIB,
            arena_bytes: 12 * MIB,
            own_net: (20 * MIB + 100) as i64,
        };
        let c = Causes::of_execution(&start, &end, 100, 0);
        assert_eq!(c.sum(), (81 * MIB) as i64);
        assert_eq!(c.native, (80 * MIB) as i64, "{c:?}");
        assert_eq!(c.files, MIB as i64);
        assert_eq!(c.python, 100);
        assert_eq!(c.other_threads, 0);
    }

    #[test]
    fn add_unread_is_an_execution_between_a_sample_and_itself() {
        let mixed = mixed_sample();
        let samples = [
            Sample::default(),
            sample(60 * MIB, 40 * MIB, 36 * MIB),
            Sample { os: OsReading { unresident: 7 * MIB, ..mixed.os }, ..mixed },
        ];
        for s in &samples {
            for (net, gc_freed) in [(0, 0), (4096, 0), (-(3 * MIB as i64), MIB), (77, 5)] {
                let start = Causes { python: 1, gc: -2, other_threads: 3, native: 4, ..Default::default() };
                let (mut read, mut unread) = (start, start);
                read.add(&Causes::of_execution(s, s, net, gc_freed));
                unread.add_unread(net, gc_freed);
                assert_eq!(read, unread, "{net} {gc_freed}");
            }
        }
    }

    #[test]
    fn arenas_returned_are_the_allocator_and_gc_frees_are_split_out() {
        // The line freed 30 MiB, 10 of it inside a collection; pymalloc unmapped 28 arenas.
        let start = sample(60 * MIB, 40 * MIB, 36 * MIB);
        let end = sample(32 * MIB, 10 * MIB, 8 * MIB);
        let net = -(30 * MIB as i64);
        let c = Causes::of_execution(&start, &end, net, 10 * MIB);
        assert_eq!(c.python, -(20 * MIB as i64));
        assert_eq!(c.gc, -(10 * MIB as i64));
        assert_eq!(c.allocator, 2 * MIB as i64);
        assert_eq!(c.sum(), -(28 * MIB as i64));
        let facts = NoteFacts {
            rss_delta: c.sum(),
            freed: 30 * MIB,
            gc_collections: 1,
            gc_freed: 10 * MIB,
            causes: c,
            ..Default::default()
        };
        let text = note(&facts).expect("RSS fell");
        assert!(text.contains("collector ran 1 time") && text.contains("freed 10.0 MiB"), "{text}");
    }

    #[test]
    fn notes_explain_the_largest_movement_first_in_words_that_match_it() {
        // scipy's detrend line: the line kept 191 MiB of Python objects; the allocators' 3 MiB
        // is the smaller story, and nothing freed was kept.
        let detrend = NoteFacts {
            rss_delta: 194 * MIB as i64,
            allocated: 976 * MIB,
            freed: 785 * MIB,
            causes: Causes { python: 191 * MIB as i64, allocator: 3 * MIB as i64, ..Default::default() },
            ..Default::default()
        };
        let text = note(&detrend).unwrap();
        assert!(text.contains(": this line allocated and kept 191.0 MiB of Python objects; "), "{text}");
        assert!(text.contains("grew their footprint by 3.0 MiB") && !text.contains("fragmented"), "{text}");

        // RSS rose by less than the line's new objects because they reused freed memory: the
        // allocators released nothing.
        let reused = NoteFacts {
            rss_delta: 5 * MIB as i64,
            allocated: 18 * MIB,
            causes: Causes { python: 18 * MIB as i64, allocator: -(13 * MIB as i64), ..Default::default() },
            ..Default::default()
        };
        let text = note(&reused).unwrap();
        assert!(
            text.contains("13.0 MiB of the new Python objects went into memory the allocators already held"),
            "{text}"
        );
        assert!(!text.contains("released") && !text.contains("trimmed"), "{text}");

        // The allocators' free memory shrank while RSS rose and Python freed: not a release either.
        let shrank = NoteFacts {
            rss_delta: 2 * MIB as i64,
            causes: Causes {
                python: -(MIB as i64),
                allocator: -(2 * MIB as i64),
                native: 5 * MIB as i64,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = note(&shrank).unwrap();
        assert!(text.contains("C extension allocated 5.0 MiB") && !text.contains("trimmed"), "{text}");
    }

    #[test]
    fn notes_name_the_cause_and_never_blame_an_absent_collector() {
        let fragmented = NoteFacts {
            rss_delta: 0,
            freed: 30 * MIB,
            causes: Causes { python: -(30 * MIB as i64), allocator: 30 * MIB as i64, ..Default::default() },
            ..Default::default()
        };
        let text = note(&fragmented).unwrap();
        assert!(text.contains("fragmented") && !text.contains("collector"), "{text}");

        let released = NoteFacts {
            rss_delta: -(3 * MIB as i64),
            arenas_unmapped: 3,
            causes: Causes { allocator: -(3 * MIB as i64), ..Default::default() },
            ..Default::default()
        };
        assert!(note(&released).unwrap().contains("returned 3 empty arenas"));

        let lazy = NoteFacts {
            rss_delta: 0,
            causes: Causes { python: 200_000_000, lazy: -200_000_000, ..Default::default() },
            ..Default::default()
        };
        assert!(note(&lazy).unwrap().contains("not resident"));

        // Python's net does not explain RSS here: the allocation is not resident.
        let reserved = NoteFacts {
            rss_delta: 4096,
            causes: Causes { python: 200_000_033, lazy: -199_995_937, ..Default::default() },
            ..Default::default()
        };
        assert!(note(&reserved).unwrap().contains("not resident"));

        // A fall of less than 1 MiB from one arena returned is the allocator's, not Python's 64 B.
        let one_arena = NoteFacts {
            rss_delta: -(500 << 10),
            freed: 64,
            arenas_unmapped: 1,
            causes: Causes {
                python: -64,
                allocator: -1_048_512,
                unexplained: 1_048_576 - (500 << 10),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(note(&one_arena).unwrap().contains("returned 1 empty arena"), "{:?}", note(&one_arena));

        let quiet =
            NoteFacts { rss_delta: 4096, causes: Causes { python: 4096, ..Default::default() }, ..Default::default() };
        assert_eq!(note(&quiet), None);

        let gc = NoteFacts {
            rss_delta: -(5 * MIB as i64),
            gc_collections: 1,
            gc_freed: 5 * MIB,
            causes: Causes { gc: -(5 * MIB as i64), ..Default::default() },
            ..Default::default()
        };
        assert!(note(&gc).unwrap().contains("garbage collector ran 1 time"));

        // The collector freed 19 MiB that glibc kept: named first, the allocator's share cited.
        let kept = NoteFacts {
            rss_delta: 0,
            freed: 19 << 20,
            gc_collections: 1,
            gc_freed: 19 << 20,
            causes: Causes { gc: -(19 << 20), allocator: (19 << 20) + 300, python: -300, ..Default::default() },
            ..Default::default()
        };
        let text = note(&kept).unwrap();
        assert!(text.contains("garbage collector") && text.contains("allocators kept 19.0 MiB"), "{text}");
    }
}
