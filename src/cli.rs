//! The command line, parsed by clap. Python runs the program; this module only decides what the
//! user asked for, so errors and help look like every other clap tool.

use clap::{Args, Parser, Subcommand};

const RUN_EXAMPLES: &str = "\
Examples:
  memsleuth run script.py arg1 arg2          profile functions decorated with @profile (or, if the
                                             script never mentions profile, all of its code)
  memsleuth run -f parse -f util:load app.py profile app.py's parse and util's load, no edits
  memsleuth run -m mypackage.tool --flag     run a module, like python -m
  memsleuth run -c 'import x; x.main()'      run a string of code
  memsleuth run --json out.json -o out.txt app.py
  python -m memsleuth run script.py          the same as memsleuth run";

const REPORT_EXAMPLES: &str = "\
Examples:
  memsleuth report out.json                  print a saved report as text
  memsleuth report --min-bytes 1MiB out.json only lines that moved at least 1 MiB";

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
    /// Decimals of the MiB columns (a decorator's own precision wins)
    #[arg(long, default_value_t = 1, value_name = "N")]
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
        #[arg(short = 'm', value_name = "MODULE", conflicts_with = "code")]
        module: Option<String>,
        /// Run the program passed in as a string (like python -c)
        #[arg(short = 'c', value_name = "CODE")]
        code: Option<String>,
        /// Also profile this function, by qualified name (`Class.method`), or `module:qualname`
        /// for another module; repeatable
        #[arg(short = 'f', long = "function", value_name = "QUALNAME")]
        functions: Vec<String>,
        /// Write the JSON report (schema memsleuth.report/1) to PATH
        #[arg(long, value_name = "PATH")]
        json: Option<String>,
        /// Write the text report to PATH instead of the terminal
        #[arg(short = 'o', long, value_name = "PATH")]
        output: Option<String>,
        /// Print no text report
        #[arg(short = 'q', long)]
        quiet: bool,
        #[command(flatten)]
        text: TextOptions,
        /// The script to run, then its arguments (with -m or -c: only the arguments)
        #[arg(trailing_var_arg = true, value_name = "SCRIPT [ARGS]")]
        program: Vec<String>,
    },
    /// Print a saved JSON report as text
    #[command(after_help = REPORT_EXAMPLES)]
    Report {
        /// A report written by `memsleuth run --json`
        file: String,
        #[command(flatten)]
        text: TextOptions,
    },
}
