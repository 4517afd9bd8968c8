//! The `gpuopt` command line: info, parity, replay, matfn, hutchinson, bench.

use clap::{Parser, Subcommand, ValueEnum};
use gpuopt::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gpuopt",
    version,
    about = "GPU optimizer kernels: adapter info, GPU-vs-CPU parity, trajectory replay, matrix functions, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Backend {
    Gpu,
    Cpu,
}

#[derive(Subcommand)]
enum Command {
    /// The adapter, backend and limits gpuopt would use.
    Info,
    /// Every kernel, GPU vs CPU reference: the elementwise optimizers at a few sizes, then the
    /// matrix family (GEMM, NS5, roots, Muon, AuON, REG, ASGO, DASGO); errors and PASS/FAIL.
    Parity {
        /// Steps per optimizer.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Only kernels whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Run an optimizer over the gradients in CASE_DIR/inputs.npz; write CASE_DIR/outputs.npz.
    Replay {
        /// Folder with case.json and inputs.npz.
        case_dir: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = Backend::Gpu)]
        backend: Backend,
    },
    /// A matrix function (newton_schulz5, polar, sqrt, inv_sqrt incl. polar_express, inv_root) of
    /// CASE_DIR/inputs.npz `a`; writes CASE_DIR/outputs.npz `y`.
    ///
    /// case.json names the "function": newton_schulz5 ("steps"), polar ("max_iters"), sqrt and inv_sqrt
    /// ("method": newton_schulz with "iters" and "tol", mtp or mpa with "degree"; for inv_sqrt also
    /// polar_express with "iters" and "eps"), inv_root ("p" = 1 to 32, "eps", "eps_relative",
    /// "max_iters", "tol"). Keys, defaults and ranges: README.md "Command line", ALGORITHMS.md §11.4.
    Matfn {
        /// Folder with case.json and inputs.npz.
        case_dir: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = Backend::Gpu)]
        backend: Backend,
    },
    /// Hutchinson's diagonal estimate of CASE_DIR/inputs.npz `a`; writes CASE_DIR/outputs.npz `diag`.
    Hutchinson {
        /// Folder with case.json ({"samples": N (1 to 2^20), "seed": S}) and inputs.npz.
        case_dir: PathBuf,
        /// Where to run.
        #[arg(long, value_enum, default_value_t = Backend::Gpu)]
        backend: Backend,
    },
    /// Benchmark suites, each against the limit measured in the same run.
    Bench {
        /// Suite (elementwise, gemm, ns, hutchinson, roots); all when omitted.
        #[arg(long)]
        suite: Option<String>,
        /// Print a JSON array of records instead of a table.
        #[arg(long)]
        json: bool,
        /// Fewer repetitions and smaller sizes (for a quick look or CI).
        #[arg(long)]
        quick: bool,
    },
}

fn run(cli: Cli) -> gpuopt::Result<bool> {
    match cli.command {
        Command::Info => {
            let ctx = Context::new()?;
            println!("{}", ctx.info());
            Ok(true)
        }
        Command::Parity { steps, only } => {
            if steps == 0 {
                return Err(gpuopt::Error::Invalid("--steps must be at least 1 (0 would compare nothing)".into()));
            }
            let ctx = Context::new()?;
            // Everything runs before anything prints, so a filter that matches nothing is an error
            // with no table above it.
            let mut elementwise = Vec::new();
            for (name, alg) in gpuopt::parity::test_algorithms() {
                if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                    continue;
                }
                elementwise.extend(gpuopt::parity::run(&ctx, &name, &alg, &[1, 7, 257, 4099, 65537], steps, 42, true)?);
            }
            let matrix = gpuopt::parity::matrix_run(&ctx, steps, only.as_deref())?;
            if elementwise.is_empty() && matrix.is_empty() {
                let o = only.unwrap_or_default();
                return Err(gpuopt::Error::Invalid(format!("no kernel's name contains {o:?} (see `gpuopt parity`)")));
            }
            println!("adapter: {}", ctx.info().name);
            let mut all = true;
            if !elementwise.is_empty() {
                println!(
                    "{:<16} {:>9} {:>6} {:>11} {:>11} {:>9} {:>10}  verdict",
                    "kernel", "size", "steps", "max abs", "max rel", "err/tol", "flips"
                );
            }
            for r in elementwise {
                all &= r.pass;
                println!(
                    "{:<16} {:>9} {:>6} {:>11.3e} {:>11.3e} {:>9.3} {:>10}  {}",
                    r.name,
                    r.size,
                    r.steps,
                    r.max_abs,
                    r.max_rel,
                    r.worst,
                    format!("{}/{}", r.mismatches, r.budget),
                    if r.pass { "PASS" } else { "FAIL" }
                );
            }
            if !matrix.is_empty() {
                println!();
                println!(
                    "{:<24} {:<36} {:<15} {:>10} {:>10}  verdict",
                    "kernel", "case", "measure", "error", "tolerance"
                );
                for r in matrix {
                    all &= r.pass;
                    println!(
                        "{:<24} {:<36} {:<15} {:>10.3e} {:>10.3e}  {}",
                        r.name,
                        r.case,
                        r.measure,
                        r.err,
                        r.tol,
                        if r.pass { "PASS" } else { "FAIL" }
                    );
                }
            }
            Ok(all)
        }
        Command::Replay { case_dir, backend } => {
            gpuopt::replay::run_case(&case_dir, || match backend {
                Backend::Gpu => Context::new().map(Some),
                Backend::Cpu => Ok(None),
            })?;
            Ok(true)
        }
        Command::Matfn { case_dir, backend } => {
            gpuopt::matfn::run_case(&case_dir, || match backend {
                Backend::Gpu => Context::new().map(Some),
                Backend::Cpu => Ok(None),
            })?;
            Ok(true)
        }
        Command::Hutchinson { case_dir, backend } => {
            gpuopt::matfn::run_hutchinson_case(&case_dir, || match backend {
                Backend::Gpu => Context::new().map(Some),
                Backend::Cpu => Ok(None),
            })?;
            Ok(true)
        }
        Command::Bench { suite, json, quick } => {
            let ctx = Context::new()?;
            let records = gpuopt::bench::run(&ctx, suite.as_deref(), quick, !json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records).expect("json"));
            } else {
                gpuopt::bench::print_table(&ctx, &records);
            }
            Ok(true)
        }
    }
}

/// Clap's usage error as one line (its message, possible values and tip, without the blank lines and
/// the "--help" footer), so a misused command fails like a bad case: one line on stderr.
fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut line = String::new();
    for part in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")) {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if part.starts_with("tip:") || part.starts_with("Usage:") { "; " } else { " " });
        }
        line.push_str(part);
    }
    line + " (see --help)"
}

/// The case commands promise that a failed run leaves no `outputs.npz`; a command line clap refuses
/// (`--backend tpu`) is a failed run too, so the stale output of its CASE_DIR goes: only for a case
/// command in the subcommand's place, only its first positional argument (skipping `--backend` and
/// its value), and only a folder holding case.json.
fn remove_stale_outputs(args: &[std::ffi::OsString]) {
    if !args.get(1).is_some_and(|c| ["replay", "matfn", "hutchinson"].iter().any(|n| c == n)) {
        return;
    }
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--backend" {
            rest.next();
        } else if !arg.to_string_lossy().starts_with('-') {
            let dir = std::path::Path::new(arg);
            if dir.join("case.json").is_file() {
                let _ = std::fs::remove_file(dir.join("outputs.npz"));
            }
            return;
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // --help and --version (stdout, success) and a bare `gpuopt` (the help, on stderr) stay clap's.
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            remove_stale_outputs(&args);
            eprintln!("gpuopt: {}", usage_error_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gpuopt: {e}");
            ExitCode::FAILURE
        }
    }
}
