use std::process::ExitCode;

use clap::Parser;
use dbx_identity_operator::cli::{Cli, run};

// glibc's malloc kept the operator's RSS well above its live heap after converging thousands of
// grants (fragmentation across arenas); jemalloc returns freed pages (docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Two arenas, not four per core: the operator is I/O-bound with a handful of busy threads, and
// every arena keeps its own free pages. Freed pages go back to the OS after a second, not ten.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8] = b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
