//! The command line, parsed by clap. Python runs the program; this module only decides what the
//! user asked for, so errors and help look like every other clap tool.

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  memsleuth run script.py arg1 arg2       profile the functions decorated with @profile
  memsleuth run --json report.json app.py also write the JSON report
  python -m memsleuth run script.py       the same, through the interpreter";

#[derive(Parser, Debug)]
#[command(name = "memsleuth", version, about = "Exact line-by-line memory profiler for Python", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a Python script as __main__ and report the memory of its profiled functions
    #[command(after_help = EXAMPLES)]
    Run {
        /// Write the JSON report (schema memsleuth.report/1) to this file
        #[arg(long, value_name = "PATH")]
        json: Option<String>,
        /// Decimals of the MiB columns
        #[arg(long, default_value_t = 1, value_name = "N")]
        precision: usize,
        /// The script to run
        script: String,
        /// Arguments passed to the script as sys.argv[1:]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}
