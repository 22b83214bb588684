use std::process::ExitCode;

use clap::Parser;
use dbx_identity_operator::cli::{Cli, run};

// glibc's malloc kept the operator's RSS well above its live heap after converging thousands of
// grants (fragmentation across arenas); jemalloc returns freed pages (docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena and no per-thread caches: the operator is I/O-bound with a handful of busy threads,
// and every arena and thread cache keeps its own free memory. Freed pages go back to the OS at
// once. At 5000 grants under faults this took peak RSS from 79.1 to 76.7 MiB with no slower
// convergence (tests/integration/load.rs, docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8] = b"narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
