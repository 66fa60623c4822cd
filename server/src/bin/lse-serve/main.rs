//! `lse-serve`: HTTP segmentation with an LSE model (see the README, "HTTP API").

mod args;

use clap::Parser;

/// glibc raises its mmap threshold adaptively up to 32 MiB, after which the
/// multi-megabyte per-image buffers (class scores, probabilities) are carved out of its
/// heaps and the resident size of a long-running server creeps up with fragmentation.
/// A fixed threshold sends every allocation of 1 MiB or more to mmap, which returns it
/// to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let args = args::Args::parse();
    args.verbosity.init_tracing();
    let cfg = args.into_config();
    // Decoding, resizing, upsampling and encoding run on the blocking pool: a few
    // threads per core keep the cores busy without holding many images in memory.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lse-serve")
        .max_blocking_threads((2 * cores).max(4))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    lse_cli::exit_on_error(runtime.block_on(lse_server::serve(cfg)));
}
