//! The command line, parsed by clap. Python runs the program; this module only decides what the
//! user asked for, so errors and help look like every other clap tool.

use clap::{Args, CommandFactory, Parser, Subcommand};
use memsleuth_core::report::MAX_PRECISION;

const RUN_EXAMPLES: &str = "\
Examples:
  memsleuth run script.py arg1 arg2          profile functions decorated with @profile (or, if the
                                             script never mentions profile, all of its code)
  memsleuth run -f parse -f util:load app.py profile app.py's parse and util's load, no edits
  memsleuth run -m mypackage.tool --flag     run a module, like python -m
  memsleuth run -q -m pytest -x tests/       memsleuth's -q, pytest's -x: what follows
                                             the program is the program's
  memsleuth run -c 'import x; x.main()'      run a string of code
  memsleuth run --json out.json -o out.txt app.py
  memsleuth run --html report.html app.py    one self-contained page: tables, causes, timeline, hints
  python -m memsleuth run script.py          the same as memsleuth run";

const REPORT_EXAMPLES: &str = "\
Examples:
  memsleuth report out.json                  print a saved report as text
  memsleuth report --min-bytes 1MiB out.json only lines that moved at least 1 MiB
  memsleuth report out.json --html out.html  write the report as one offline HTML page
  memsleuth report out.json --open           write the page to a temporary file and open it";

#[derive(Parser, Debug)]
#[command(
    name = "memsleuth",
    version,
    about = "Exact line-by-line memory profiler for Python",
    after_help = "Run `memsleuth run --help` for examples."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct TextOptions {
    /// Decimals of the MiB columns, 0 to 20 (a decorator's own precision wins)
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_PRECISION as u64))]
    pub precision: usize,
    /// Hide lines whose allocated, freed and RSS change are all below this size (bytes, or with
    /// a unit: 64KiB, 1MiB, 1GB)
    #[arg(long, value_name = "SIZE", value_parser = memsleuth_core::report::parse_size)]
    pub min_bytes: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a Python program and report the memory of its profiled functions, line by line
    #[command(after_help = RUN_EXAMPLES)]
    Run {
        /// Run library module MODULE as a script (like python -m)
        #[arg(short = 'm', value_name = "MODULE", allow_hyphen_values = true)]
        module: Option<String>,
        /// Run the program passed in as a string (like python -c)
        #[arg(short = 'c', value_name = "CODE", allow_hyphen_values = true)]
        code: Option<String>,
        /// Also profile this function, by qualified name (`Class.method`), or `module:qualname`
        /// for another module; repeatable
        #[arg(short = 'f', long = "function", value_name = "QUALNAME")]
        functions: Vec<String>,
        /// Write the JSON report (schema memsleuth.report/1) to PATH
        #[arg(long, value_name = "PATH")]
        json: Option<String>,
        /// Write the report as one self-contained HTML page (no network needed) to PATH
        #[arg(long, value_name = "PATH")]
        html: Option<String>,
        /// Write the text report to PATH instead of the terminal
        #[arg(short = 'o', long, value_name = "PATH")]
        output: Option<String>,
        /// Print no text report
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Also profile the children the program forks (os.fork, multiprocessing's fork): each
        /// is reported by pid, and a summary adds up every process's figures
        #[arg(long)]
        follow_fork: bool,
        /// Also sample RSS and tracked bytes every SECONDS for the JSON report's timeline (as
        /// mprof does), besides the samples taken as profiled calls end
        #[arg(long, value_name = "SECONDS", value_parser = parse_interval)]
        interval: Option<f64>,
        /// As python -m memory_profiler --timestamp: the builtin `profile` times the functions it
        /// decorates (RSS and time at each call's start and end) instead of profiling their
        /// lines, and the text report is their mprof `FUNC` lines (appended to -o PATH)
        #[arg(long, conflicts_with = "functions")]
        timestamp: bool,
        /// With --timestamp, as python -m memory_profiler --include-children: the RSS in the FUNC
        /// lines adds the program's child processes'
        #[arg(long, requires = "timestamp")]
        include_children: bool,
        /// As python -m memory_profiler --pdb-mmem: step into pdb in the profiled function whose
        /// line or return first finds the process's RSS at or over MAXMEM MiB
        #[arg(long = "pdb-mmem", value_name = "MAXMEM", value_parser = parse_mib, conflicts_with = "timestamp")]
        pdb_mmem: Option<f64>,
        #[command(flatten)]
        text: TextOptions,
        /// The script to run, then its arguments (with -m or -c: only the arguments); everything
        /// after SCRIPT, -m MODULE or -c CODE is the program's, as with python
        #[arg(value_name = "SCRIPT [ARGS]")]
        program: Vec<String>,
    },
    /// Print a saved JSON report as text, or write it as an HTML page (--html, --open)
    #[command(after_help = REPORT_EXAMPLES)]
    Report {
        /// A report written by `memsleuth run --json`
        file: String,
        /// Write the report as one self-contained HTML page (no network needed) to PATH instead
        /// of printing it as text
        #[arg(long, value_name = "PATH")]
        html: Option<String>,
        /// Open the HTML page in the default browser (written to --html PATH, or a temporary file)
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        text: TextOptions,
    },
}

/// A sampling interval: a positive number of seconds, at least a millisecond.
fn parse_interval(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.001 => Ok(seconds),
        _ => Err(format!("'{text}' is not an interval in seconds of at least 0.001")),
    }
}

/// A memory size in MiB, as memory_profiler takes it: a positive number.
fn parse_mib(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(mib) if mib.is_finite() && mib > 0.0 => Ok(mib),
        _ => Err(format!("'{text}' is not a positive number of MiB")),
    }
}

/// Parses memsleuth's command line. As with python, everything after the script, `-m MODULE` or
/// `-c CODE` belongs to the program, even what looks like one of memsleuth's options: clap would
/// go on reading options after `-m`'s value, so the program's part is split off first and only
/// memsleuth's part is given to clap.
pub fn parse(mut argv: Vec<String>) -> Result<Cli, clap::Error> {
    let program = match program_start(&argv) {
        Some((own_end, program_start)) => {
            let program = argv.split_off(program_start);
            argv.truncate(own_end);
            program
        }
        None => Vec::new(),
    };
    let mut cli = Cli::try_parse_from(argv)?;
    if let Command::Run { program: args, .. } = &mut cli.command {
        args.extend(program);
    }
    Ok(cli)
}

/// For `run`: (end of memsleuth's own arguments, start of the program's), or None when the
/// command is not `run` or names no program. The options that take a value are read from the
/// parser's own definition, so the two cannot disagree.
fn program_start(argv: &[String]) -> Option<(usize, usize)> {
    // The top level has only flags, so its first other word is the subcommand.
    let run_at = 1 + argv.iter().skip(1).position(|a| !a.starts_with('-'))?;
    if argv[run_at] != "run" {
        return None;
    }
    let command = Cli::command();
    let run = command.find_subcommand("run")?;
    let valued = || run.get_arguments().filter(|a| !a.is_positional() && a.get_action().takes_values());
    let valued_long = |name: &str| valued().any(|a| a.get_long() == Some(name));
    let valued_short = |c: char| valued().any(|a| a.get_short() == Some(c));
    // -m MODULE and -c CODE name the program: what follows their value is its arguments.
    let names_program = |c: char| {
        run.get_arguments().any(|a| a.get_short() == Some(c) && ["module", "code"].contains(&a.get_id().as_str()))
    };
    let mut i = run_at + 1;
    'words: while i < argv.len() {
        let word = &argv[i];
        if word == "--" {
            return Some((i, i + 1));
        }
        if let Some(long) = word.strip_prefix("--") {
            i += if !long.contains('=') && valued_long(long) { 2 } else { 1 };
        } else if word.len() > 1 && word.starts_with('-') {
            // A cluster of short options (-qo PATH): the first that takes a value takes the rest
            // of the word, or the next word when nothing is left.
            for (at, c) in word.char_indices().skip(1) {
                if valued_short(c) {
                    let end = if at + c.len_utf8() < word.len() { i + 1 } else { i + 2 }.min(argv.len());
                    if names_program(c) {
                        return Some((end, end));
                    }
                    i = end;
                    continue 'words;
                }
            }
            i += 1;
        } else {
            return Some((i, i));
        }
    }
    None
}
