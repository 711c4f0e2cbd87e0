//! Hints: rewrites that a line's source and its measured figures make clear, each with the
//! saving the figures show (docs/design.md, "HTML report and hints"). A hint is never a guess
//! about code that did not run: every kind needs both a pattern in the source and figures that
//! show the cost, and the saving it states is one of the line's own measured figures.

use crate::report::{human_bytes, Figures};

/// One suggested change to a line, with what the figures say it would save.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    /// One of the `KIND_*` names.
    pub kind: String,
    /// What to change and why, citing the figures.
    pub message: String,
    /// The measured bytes the change would save (see each kind).
    pub saving_bytes: u64,
}

/// A comprehension handed whole to a reducer: a generator expression saves its transient peak.
pub const KIND_GENERATOR: &str = "generator_expression";
/// A value grown by concatenation, copied at every step: allocated far above net.
pub const KIND_CONCATENATION: &str = "concatenation";
/// Bytes a line allocated that were still live after each call returned, over several calls.
pub const KIND_LEAK: &str = "leak_suspect";
/// A `del` or a return whose frees the allocators kept instead of returning them.
pub const KIND_FRAGMENTATION: &str = "fragmentation";

/// No hint is given for a saving below this: a pymalloc arena (256 KiB before CPython 3.10,
/// 1 MiB since) or less is within the allocators' ordinary slack.
pub const HINT_THRESHOLD: u64 = 256 << 10;

/// Frees the allocators kept get a hint from this much per execution: pymalloc keeps one empty
/// arena (1 MiB since CPython 3.10) for reuse whatever the program does.
pub const KEPT_THRESHOLD: u64 = 1 << 20;

/// Functions that consume an iterable once, front to back, so that a generator expression does
/// what a comprehension built in full does. `str.join` is not one: it makes a list of any
/// iterable that is not already a list or tuple, so a generator would save nothing.
const REDUCERS: [&str; 11] = ["sum", "max", "min", "any", "all", "sorted", "set", "frozenset", "tuple", "dict", "list"];
/// Reducers for which a set comprehension's removal of duplicates makes no difference.
const SET_SAFE: [&str; 6] = ["max", "min", "any", "all", "set", "frozenset"];

/// pymalloc serves requests of up to this many bytes from its arenas; glibc serves larger ones.
const SMALL_REQUEST: u64 = 512;

/// The hints for one line of a function called `calls` times, which returns or yields the
/// names in `returned` (see `returned_names`).
pub fn line_hints(source: &str, figures: &Figures, calls: u64, returned: &[String]) -> Vec<Hint> {
    let code = strip_comment(source.trim());
    let mut hints = Vec::new();
    hints.extend(generator_hint(code, figures));
    hints.extend(concatenation_hint(code, figures));
    // A line that binds what the function returns hands its bytes to the caller: they outlive
    // the call by design.
    if !assigned_name(code).is_some_and(|name| returned.iter().any(|r| r == name)) {
        hints.extend(leak_hint(code, figures, calls));
    }
    if starts_with_word(code, "del") || starts_with_word(code, "return") {
        hints.extend(fragmentation_hint(figures, &format!("`{}`", shorten(code))));
    }
    hints
}

/// The hints for a function's teardown (its frame's locals released after the return).
pub fn teardown_hints(figures: &Figures) -> Vec<Hint> {
    fragmentation_hint(figures, "the return (the frame's locals released)").into_iter().collect()
}

/// The names a function's source returns or yields as they are (`return a`, `yield a, b`).
pub fn returned_names(source: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for line in source {
        let code = strip_comment(line.trim());
        for word in ["return", "yield"] {
            if starts_with_word(code, word) {
                for part in code[word.len()..].split(',') {
                    let part = part.trim();
                    if !part.is_empty() && part.chars().all(is_ident) && !names.iter().any(|n| n == part) {
                        names.push(part.to_string());
                    }
                }
            }
        }
    }
    names
}

/// The name a line binds (`name = ...`, `name: T = ...`, `name += ...`), if it binds one.
fn assigned_name(code: &str) -> Option<&str> {
    let end = code.find(|c: char| !is_ident(c)).unwrap_or(code.len());
    let (name, rest) = (&code[..end], code[end..].trim_start());
    if name.is_empty() {
        return None;
    }
    let op_end = rest.find('=')?;
    let op = &rest[..op_end];
    let binds = (op.is_empty() && !rest[1..].starts_with('='))
        || (op.len() <= 2 && op.chars().all(|c| "+-*/%&|^<>@".contains(c)) && !op.is_empty() && op != "<" && op != ">")
        || op.starts_with(':');
    binds.then_some(name)
}

fn starts_with_word(code: &str, word: &str) -> bool {
    code.strip_prefix(word).is_some_and(|rest| rest.is_empty() || !is_ident(rest.chars().next().unwrap_or(' ')))
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn shorten(code: &str) -> String {
    const MAX: usize = 60;
    if code.chars().count() <= MAX {
        code.to_string()
    } else {
        format!("{}...", code.chars().take(MAX).collect::<String>())
    }
}

/// The code of a line without a trailing `# comment` (a `#` inside a string stays).
fn strip_comment(code: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in code.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' => return code[..i].trim_end(),
            None => {}
        }
    }
    code
}

/// The line with the contents of its strings replaced by spaces, byte for byte.
fn mask_strings(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in code.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                    continue;
                }
                out.extend(std::iter::repeat_n(' ', c.len_utf8()));
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// Byte offset of the bracket that closes the one opening at `open`, skipping strings; None if
/// the line does not close it.
fn closing(code: &str, open: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in code[open..].char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `inner` (a bracket's contents) is a comprehension: a `for` at its own depth.
/// Returns Some(is_dict) when it is.
fn comprehension(inner: &str) -> Option<bool> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut dict = false;
    let mut prev = ' ';
    let bytes = inner.as_bytes();
    for (i, c) in inner.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            prev = c;
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ':' if depth == 0 => dict = true,
            'f' if depth == 0
                && !is_ident(prev)
                && inner[i..].starts_with("for")
                && bytes.get(i + 3).is_some_and(|b| !is_ident(*b as char)) =>
            {
                return Some(dict);
            }
            _ => {}
        }
        prev = c;
    }
    None
}

/// `sum([x * x for x in xs])` and the like: the comprehension's container is built in full,
/// read once by the reducer and freed on the same line. Saving: the line's transient peak, the
/// part of its peak it did not keep (peak minus net).
fn generator_hint(code: &str, g: &Figures) -> Option<Hint> {
    // The peak is the largest of the executions', the net their sum: the peak is compared with
    // one execution's mean net.
    let net = g.net_bytes / g.hits.max(1) as i64;
    let transient = (g.peak_bytes - net.max(0)).max(0) as u64;
    // Most of the peak must be gone by the line's end (a sorted() or tuple() result is kept).
    if transient < HINT_THRESHOLD || transient * 2 < g.peak_bytes.max(0) as u64 {
        return None;
    }
    // Calls are looked for outside strings; offsets are the same in both.
    let bare = mask_strings(code);
    let mut from = 0;
    while let Some(at) = bare[from..].find('(').map(|i| from + i) {
        from = at + 1;
        let name_start = code[..at].rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
        let name = &code[name_start..at];
        // A method (`x.sum(...)`) is not the builtin.
        if !REDUCERS.contains(&name) || code[..name_start].ends_with('.') {
            continue;
        }
        let arg = at + 1 + (code[at + 1..].len() - code[at + 1..].trim_start().len());
        let bracket = code[arg..].chars().next()?;
        if bracket != '[' && bracket != '{' {
            continue;
        }
        let Some(end) = closing(code, arg) else { continue };
        let Some(is_dict) = comprehension(&code[arg + 1..end]) else { continue };
        let after = code[end + 1..].trim_start();
        // The comprehension must be the call's first argument, whole.
        if !(after.starts_with(')') || after.starts_with(',')) {
            continue;
        }
        if bracket == '{' && (is_dict || !SET_SAFE.contains(&name)) {
            // A dict comprehension yields pairs where its generator would yield keys, and a set
            // comprehension removes duplicates a sum or a sorted list would keep.
            continue;
        }
        if name == "list" {
            // list([...]) copies a list: the rewrite is to drop the call, not a generator.
            continue;
        }
        let inner = code[arg + 1..end].trim();
        let rewritten =
            if after.starts_with(')') { format!("{name}({inner})") } else { format!("{name}(({inner}), ...)") };
        let kind = if bracket == '[' { "list" } else { "set" };
        return Some(Hint {
            kind: KIND_GENERATOR.into(),
            message: format!(
                "{name}() reads the {kind} comprehension once and it is freed on this line: pass a generator \
                 expression instead, `{}`, to save up to {}, the line's transient peak (peak {}, net {}{}){}",
                shorten(&rewritten),
                human_bytes(transient as i64),
                human_bytes(g.peak_bytes),
                human_bytes(net),
                if g.hits > 1 { " an execution on average" } else { "" },
                if name == "sorted" { "; sorted() still builds one list of its own" } else { "" }
            ),
            saving_bytes: transient,
        });
    }
    None
}

/// `s += ...` or `x = x + ...` run many times, each run allocating a bigger block than the
/// last: the value is copied at every step. Saving: what the line allocated and freed again
/// (allocated minus what it kept).
fn concatenation_hint(code: &str, g: &Figures) -> Option<Hint> {
    let target = concatenated_target(code)?;
    let kept = g.net_bytes.max(0) as u64;
    let copied = g.allocated_bytes.saturating_sub(kept);
    // Copies grow with the value, so their average block is large; a loop adding ints or
    // one-element temporaries allocates as much in small blocks and is no concatenation.
    let average = g.allocated_bytes / g.allocations.max(1);
    if g.hits < 3 || copied < HINT_THRESHOLD || g.allocated_bytes < 4 * kept || average < SMALL_REQUEST {
        return None;
    }
    Some(Hint {
        kind: KIND_CONCATENATION.into(),
        message: format!(
            "`{}` ran {} times and allocated {} in blocks of {} on average (a realloc counts as a new block) \
             to keep {}: each run makes a new, longer copy of {target}. Collect the parts in a list and join \
             them once (`\"\".join(parts)`, `b\"\".join(parts)`), or grow a list in place \
             (`{target}.append(...)`, `{target}.extend(...)`, `{target} += ...` on a list), to save up to {} \
             of copying",
            shorten(code),
            g.hits,
            human_bytes(g.allocated_bytes as i64),
            human_bytes(average as i64),
            human_bytes(g.net_bytes),
            human_bytes(copied as i64)
        ),
        saving_bytes: copied,
    })
}

/// The target of `t += ...` or `t = t + ...` (a name or a dotted attribute), if the line is one.
fn concatenated_target(code: &str) -> Option<&str> {
    let end = code.find(|c: char| !(is_ident(c) || c == '.')).unwrap_or(code.len());
    let target = &code[..end];
    if target.is_empty()
        || target.starts_with('.')
        || target.ends_with('.')
        || target.starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    let rest = code[end..].trim_start();
    if rest.starts_with("+=") {
        return Some(target);
    }
    let value = rest.strip_prefix('=')?.trim_start();
    if value.starts_with('=') {
        return None;
    }
    let after = value.strip_prefix(target)?;
    let after_trim = after.trim_start();
    (after_trim.starts_with('+')
        && !after_trim.starts_with("+=")
        && !after.starts_with(|c: char| is_ident(c) || c == '.'))
    .then_some(target)
}

/// A line that left bytes allocated after its call returned, over three calls or more. The
/// books keep each line's totals over all calls, not each call's share, so what is measured is
/// the total and its mean per call; a line that returns or yields its value hands it to the
/// caller and is left out. Saving: the retained bytes.
fn leak_hint(code: &str, g: &Figures, calls: u64) -> Option<Hint> {
    if calls < 3
        || g.retained_bytes < HINT_THRESHOLD
        || starts_with_word(code, "return")
        || starts_with_word(code, "yield")
    {
        return None;
    }
    // A line that runs once per call at most; a loop's line retains per run, still per call.
    let store =
        stored_into(code).map_or(String::new(), |name| format!("; it stores into `{name}`, which outlives the call"));
    Some(Hint {
        kind: KIND_LEAK.into(),
        message: format!(
            "leak suspect: over {calls} calls this line left {} allocated after the call returned ({} a call on \
             average; the figures are totals, so whether each call added as much is not measured){store}. If \
             nothing needs it after the call, release it (drop the reference, bound the cache, or use a weakref) \
             to save {}",
            human_bytes(g.retained_bytes as i64),
            human_bytes((g.retained_bytes / calls) as i64),
            human_bytes(g.retained_bytes as i64)
        ),
        saving_bytes: g.retained_bytes,
    })
}

/// `name` in `name.append(...)`, `name.add(...)`, `name.extend(...)`, `name[...] = ...`,
/// `name.setdefault(...)`, `name.update(...)`: a container the line adds to.
fn stored_into(code: &str) -> Option<&str> {
    let end = code.find(|c: char| !(is_ident(c) || c == '.')).unwrap_or(code.len());
    let head = &code[..end];
    for method in [".append", ".extend", ".add", ".setdefault", ".update", ".insert"] {
        if let Some(name) = head.strip_suffix(method) {
            if !name.is_empty() && code[end..].starts_with('(') {
                return Some(name);
            }
        }
    }
    if code[end..].starts_with('[') && !head.is_empty() {
        let close = closing(code, end)?;
        let rest = code[close + 1..].trim_start();
        if rest.starts_with('=') && !rest.starts_with("==") {
            return Some(head);
        }
    }
    None
}

/// Frees the allocators kept: the line freed a lot of Python objects (`python` negative) while
/// the `allocator` cause shows the memory stayed, a quarter of it or more. Saving: the
/// `allocator` cause of one execution (its mean), the RSS that stayed: memory kept by one
/// execution is reused by the next, so the sum over executions is not what stays.
fn fragmentation_hint(g: &Figures, what: &str) -> Option<Hint> {
    let hits = g.hits.max(1);
    let kept = g.causes.allocator / hits as i64;
    let freed = g.freed_bytes / hits;
    if g.causes.python >= 0 || freed < KEPT_THRESHOLD || kept < KEPT_THRESHOLD as i64 || (kept as u64) * 4 < freed {
        return None;
    }
    let average = g.freed_bytes / g.frees.max(1);
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let (holder, change) = if average <= SMALL_REQUEST {
        (
            format!(
                "pymalloc: the freed blocks averaged {} (pymalloc serves blocks of up to 512 B from its arenas) \
                 and it returned {} arena{} to the system: an arena is returned only once every block in it is \
                 free, so objects still alive among the freed ones kept the rest",
                human_bytes(average as i64),
                g.arenas_unmapped,
                plural(g.arenas_unmapped)
            ),
            "Allocate what outlives this data apart from it (copy the survivors out before the bulk is built, or \
             hold bulk data in one block: bytes, array.array, numpy) so that freeing it empties whole arenas",
        )
    } else {
        (
            format!(
                "glibc: the freed blocks averaged {}, above pymalloc's 512 B, and glibc kept them in its heap (it \
                 returns memory from the heap's top only, and only beyond its trim threshold, which grows as big \
                 blocks are freed)",
                human_bytes(average as i64)
            ),
            "Reuse one buffer across calls rather than freeing and allocating it again, or have glibc return the \
             free pages after this line (`ctypes.CDLL(\"libc.so.6\").malloc_trim(0)`)",
        )
    };
    Some(Hint {
        kind: KIND_FRAGMENTATION.into(),
        message: format!(
            "{what} freed {} but RSS kept {} of it (the allocator cause){}; kept by {holder}. {change}, to save up \
             to {}",
            human_bytes(freed as i64),
            human_bytes(kept),
            if hits > 1 { format!(", an execution on average over {hits}") } else { String::new() },
            human_bytes(kept)
        ),
        saving_bytes: kept as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causes::Causes;

    const MIB: u64 = 1 << 20;

    fn figures() -> Figures {
        Figures { hits: 1, ..Figures::default() }
    }

    fn hints_of(source: &str, g: &Figures, calls: u64) -> Vec<Hint> {
        line_hints(source, g, calls, &[])
    }

    fn kinds(hints: &[Hint]) -> Vec<&str> {
        hints.iter().map(|h| h.kind.as_str()).collect()
    }

    /// The seed's line 9: peak 3.8 MiB, net 32 B.
    fn seed_comprehension() -> Figures {
        Figures {
            allocated_bytes: 13_500_000,
            allocations: 100_010,
            freed_bytes: 13_499_968,
            frees: 100_009,
            net_bytes: 32,
            peak_bytes: 3_984_000,
            ..figures()
        }
    }

    #[test]
    fn a_reduced_comprehension_gets_a_generator_with_its_transient_peak() {
        let g = seed_comprehension();
        let hints = hints_of("    NN = sum([x * x for x in range(THE_LIMIT)])", &g, 1);
        assert_eq!(kinds(&hints), [KIND_GENERATOR]);
        assert_eq!(hints[0].saving_bytes, 3_984_000 - 32);
        assert!(hints[0].message.contains("`sum(x * x for x in range(THE_LIMIT))`"), "{}", hints[0].message);
        assert!(hints[0].message.contains("3.8 MiB"), "{}", hints[0].message);
        for source in [
            "m = max([len(s) for s in names], default=0)",
            "ok = all([x > 0 for x in xs])  # comment with sum([",
            "t = tuple([f(x) for x in xs])",
            "u = set({x % 7 for x in xs})",
            "v = sorted([x for x in xs], key=abs)",
        ] {
            assert_eq!(kinds(&hints_of(source, &g, 1)), [KIND_GENERATOR], "{source}");
        }
        // sorted() keeps a list: the message says so.
        assert!(hints_of("v = sorted([x for x in xs])", &g, 1)[0].message.contains("sorted() still builds"));
        assert!(hints_of("m = max([x for x in xs], default=0)", &g, 1)[0]
            .message
            .contains("max((x for x in xs), ...)"));
    }

    #[test]
    fn a_looped_comprehension_compares_the_peak_with_one_execution() {
        let g = Figures {
            hits: 4,
            net_bytes: 4 * MIB as i64,
            peak_bytes: 4 * MIB as i64 + 3_000_000,
            ..seed_comprehension()
        };
        let hints = hints_of("NN = sum([x * x for x in range(THE_LIMIT)])", &g, 1);
        assert_eq!(hints[0].saving_bytes, 3 * MIB + 3_000_000);
        assert!(hints[0].message.contains("an execution on average"), "{}", hints[0].message);
    }

    #[test]
    fn no_generator_hint_without_a_reduced_comprehension_or_a_transient_peak() {
        let g = seed_comprehension();
        for source in [
            "PP = sum(x * x for x in range(THE_LIMIT))", // already a generator
            "NN = [x * x for x in range(THE_LIMIT)]",    // kept, no reducer
            "s = ''.join([str(x) for x in xs])",         // join lists any iterable first
            "n = len([x for x in xs])",                  // len takes no generator
            "total = sum([1, 2, 3])",                    // a display, not a comprehension
            "total = sum({x % 7 for x in xs})",          // a set's dedup changes the sum
            "d = dict({k: v for k, v in pairs})",        // dict comprehension
            "total = np.sum([x for x in xs])",           // a method, not the builtin
            "total = sum([x for x in xs] + ys)",         // not the whole argument
            "print('sum([x for x in xs])')",             // inside a string
            "l = list([x for x in xs])",                 // list(): drop the call instead
        ] {
            assert_eq!(kinds(&hints_of(source, &g, 1)), Vec::<&str>::new(), "{source}");
        }
        let source = "NN = sum([x * x for x in range(THE_LIMIT)])";
        // The measured peak is small: nothing to save.
        let small = Figures { peak_bytes: 4_000, net_bytes: 32, ..seed_comprehension() };
        assert!(hints_of(source, &small, 1).is_empty());
        // Most of the peak was kept: not transient.
        let kept = Figures { peak_bytes: 4 * MIB as i64, net_bytes: 3 * MIB as i64, ..seed_comprehension() };
        assert!(hints_of(source, &kept, 1).is_empty());
    }

    fn concatenation() -> Figures {
        Figures {
            hits: 2_000,
            allocated_bytes: 80 * MIB,
            allocations: 2_000,
            freed_bytes: 80 * MIB - 80_000,
            frees: 1_999,
            net_bytes: 80_000,
            peak_bytes: 160_000,
            ..figures()
        }
    }

    #[test]
    fn repeated_concatenation_gets_a_join() {
        for (source, target) in [
            ("s += chunk", "s"),
            ("self.buf += b'x' * 40", "self.buf"),
            ("lst = lst + [i]", "lst"),
            ("out = out + line  # grow", "out"),
        ] {
            let hints = hints_of(source, &concatenation(), 1);
            assert_eq!(kinds(&hints), [KIND_CONCATENATION], "{source}");
            assert_eq!(hints[0].saving_bytes, 80 * MIB - 80_000);
            assert!(hints[0].message.contains(&format!("copy of {target}.")), "{}", hints[0].message);
            assert!(hints[0].message.contains("ran 2000 times"), "{}", hints[0].message);
        }
    }

    #[test]
    fn no_concatenation_hint_for_other_lines_or_small_blocks() {
        for source in ["s = t + u", "s == s + 1", "x = xs + [1]", "total = total_2 + 1", "s.x += 1" /* ok below */] {
            let hints = hints_of(source, &concatenation(), 1);
            assert_eq!(kinds(&hints).contains(&KIND_CONCATENATION), source == "s.x += 1", "{source}");
        }
        // A loop adding ints: as much allocated, in 32-byte blocks.
        let ints = Figures { allocations: 80 * MIB / 32, ..concatenation() };
        assert!(hints_of("total += x * x", &ints, 1).is_empty());
        // Run once or twice: no repeated growth.
        let once = Figures { hits: 2, ..concatenation() };
        assert!(hints_of("s += chunk", &once, 1).is_empty());
        // Kept most of what it allocated.
        let kept = Figures { net_bytes: 70 * MIB as i64, ..concatenation() };
        assert!(hints_of("s += chunk", &kept, 1).is_empty());
    }

    fn retaining() -> Figures {
        Figures {
            hits: 5,
            allocated_bytes: 5 * MIB,
            allocations: 5,
            net_bytes: 5 * MIB as i64,
            retained_bytes: 5 * MIB,
            ..figures()
        }
    }

    #[test]
    fn retained_bytes_over_calls_are_a_leak_suspect() {
        let hints = hints_of("_cache.append(bytearray(MIB))", &retaining(), 5);
        assert_eq!(kinds(&hints), [KIND_LEAK]);
        assert_eq!(hints[0].saving_bytes, 5 * MIB);
        let m = &hints[0].message;
        assert!(
            m.contains("over 5 calls") && m.contains("1.0 MiB a call") && m.contains("stores into `_cache`"),
            "{m}"
        );
        assert!(hints_of("seen[key] = bytearray(MIB)", &retaining(), 5)[0].message.contains("stores into `seen`"));
        assert!(!hints_of("x = bytearray(MIB)", &retaining(), 5)[0].message.contains("stores into"));
    }

    #[test]
    fn no_leak_suspect_for_what_the_function_returns() {
        let source: Vec<String> =
            ["def make_lists():", "    a = [1] * (10 ** 6)", "    return a  # the caller's", "    yield b, c"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let returned = returned_names(&source);
        assert_eq!(returned, ["a", "b", "c"]);
        for line in ["a = [1] * (10 ** 6)", "a: list = [1]", "a += [2]", "b = bytearray(MIB)"] {
            assert!(line_hints(line, &retaining(), 5, &returned).is_empty(), "{line}");
        }
        assert_eq!(kinds(&line_hints("d = bytearray(MIB)", &retaining(), 5, &returned)), [KIND_LEAK]);
        assert_eq!(kinds(&line_hints("a == bytearray(MIB)", &retaining(), 5, &returned)), [KIND_LEAK]);
    }

    #[test]
    fn no_leak_suspect_under_three_calls_or_for_a_returned_value() {
        assert!(hints_of("_cache.append(bytearray(MIB))", &retaining(), 2).is_empty());
        assert!(hints_of("return bytearray(MIB)", &retaining(), 5).is_empty());
        assert!(hints_of("yield bytearray(MIB)", &retaining(), 5).is_empty());
        let freed = Figures { retained_bytes: 1000, ..retaining() };
        assert!(hints_of("_cache.append(bytearray(MIB))", &freed, 5).is_empty());
    }

    fn fragmented() -> Figures {
        Figures {
            freed_bytes: 20 * MIB,
            frees: 20 * MIB / 64,
            net_bytes: -(20 * MIB as i64),
            rss_delta_bytes: -(2 * MIB as i64),
            arenas_unmapped: 2,
            causes: Causes { python: -(20 * MIB as i64), allocator: 18 * MIB as i64, ..Causes::default() },
            ..figures()
        }
    }

    #[test]
    fn a_del_whose_frees_stayed_is_fragmentation() {
        let hints = hints_of("del data", &fragmented(), 1);
        assert_eq!(kinds(&hints), [KIND_FRAGMENTATION]);
        assert_eq!(hints[0].saving_bytes, 18 * MIB);
        assert!(
            hints[0].message.contains("kept by pymalloc") && hints[0].message.contains("2 arenas"),
            "{}",
            hints[0].message
        );
        let large = Figures { frees: 20, ..fragmented() };
        assert!(hints_of("return None", &large, 1)[0].message.contains("kept by glibc"));
        assert_eq!(kinds(&teardown_hints(&fragmented())), [KIND_FRAGMENTATION]);
        // Over executions, what one kept (the next reuses it): 18 MiB over 10 runs is 1.8 MiB.
        let repeated = Figures { hits: 10, ..fragmented() };
        let hints = hints_of("del data", &repeated, 1);
        assert_eq!(hints[0].saving_bytes, 18 * MIB / 10);
        assert!(hints[0].message.contains("over 10"), "{}", hints[0].message);
        // 0.9 MiB a run: within the allocators' slack.
        assert!(hints_of("del data", &Figures { hits: 20, ..fragmented() }, 1).is_empty());
    }

    #[test]
    fn no_fragmentation_hint_when_the_memory_went_back_or_for_other_lines() {
        // Freed and returned: the allocator cause did not keep it.
        let mut returned = fragmented();
        returned.causes.allocator = 0;
        assert!(hints_of("del data", &returned, 1).is_empty());
        assert!(teardown_hints(&returned).is_empty());
        // Not a del or a return.
        assert!(hints_of("data = None", &fragmented(), 1).is_empty());
        assert!(hints_of("deleted = data", &fragmented(), 1).is_empty());
    }
}
