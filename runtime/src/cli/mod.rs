//! The `lse` subcommands: each module holds one command's arguments (clap) and its
//! `run` function; `src/bin/lse.rs` only dispatches.

pub mod accel;
pub mod bench;
pub mod eval;
pub mod export_triton;
pub mod info;
pub mod label;
pub mod segment;
pub mod synth;

/// Prints a value as pretty JSON on stdout.
/// Parses an image size `WIDTHxHEIGHT` (e.g. `512x256`; `X` works too), each side
/// 1..=16384; the error names the value.
pub fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 512x256"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=16384).contains(n))
            .ok_or_else(|| format!("`{s}`: `{v}` is not a whole number from 1 to 16384"))
    };
    Ok([side(w)?, side(h)?])
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Logs to stderr; `-v` raises the level, `RUST_LOG` overrides it. Colours only when
/// standard error is a terminal and `NO_COLOR` is unset or empty, so log files and
/// pipes get plain text.
pub fn init_tracing(verbose: u8) {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR");
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && no_color.is_none_or(|v| v.is_empty()))
        .with_target(false)
        .try_init();
}

/// The model to use: the one named, else the default model `models/default/model.onnx`
/// found beside the executable's ancestors or the current directory's.
pub fn model_or_default(model: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    if let Some(m) = model {
        return Ok(m);
    }
    crate::engine::default_model().ok_or_else(|| {
        anyhow::anyhow!(
            "no model named and no default model found (models/default/model.onnx); \
             run scripts/demo.sh to create it, or name a model"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("512x256"), Ok([512, 256]));
        assert_eq!(parse_size(" 16384X1 "), Ok([16384, 1]));
        for bad in [
            "512", "0x256", "512x", "ax256", "512x-1", "16385x8", "1.5x2",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }
}
