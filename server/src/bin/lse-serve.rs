//! `lse-serve`: HTTP segmentation with an LSE model (see server/API.md).

use clap::Parser;
use lse_server::Config;

fn main() {
    let cfg = Config::parse();
    lse_runtime::cli::init_tracing(cfg.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lse-serve")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(lse_server::serve(cfg)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
