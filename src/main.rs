use std::process::ExitCode;

use clap::Parser;
use dbx_identity_operator::cli::{Cli, run};

// glibc's malloc kept the operator's RSS well above its live heap after converging thousands of
// grants (fragmentation across arenas); jemalloc returns freed pages (docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
