//! Command-line helpers shared by the workspace's binaries (`lse`, `lse-train`,
//! `lse-serve`): value parsers for clap, logging set-up and small output helpers.
//! The libraries stay free of clap: their closed sets of options (provider,
//! precision, ...) list their values (`lse_runtime::choice::Choice`), and [`choice`]
//! turns such a list into a clap value parser.

use std::fmt::Display;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// A clap value parser that accepts exactly the names (`Display`) of `all`, and
/// lists them with `help`'s line for each in `--help` and in errors.
pub fn choice<T>(all: &'static [T], help: fn(T) -> &'static str) -> impl TypedValueParser<Value = T>
where
    T: Copy + Display + Send + Sync + 'static,
{
    let values = all.iter().map(move |&c| {
        let v = PossibleValue::new(c.to_string());
        match help(c) {
            "" => v,
            text => v.help(text),
        }
    });
    PossibleValuesParser::new(values).map(move |name: String| {
        *all.iter()
            .find(|c| c.to_string() == name)
            .expect("clap passes on only the listed names")
    })
}

/// `-v`, `-vv`: more log output, for every binary (flatten it into the command line).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Verbosity {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Verbosity {
    /// Starts logging at this verbosity ([`init_tracing`]).
    pub fn init_tracing(self) {
        init_tracing(self.verbose);
    }
}

/// Ends a binary: an error is printed as one `error:` line with its causes, and the
/// process exits with status 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

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

/// Prints a value as pretty JSON on stdout.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Size {
        Small,
        Large,
    }

    impl Display for Size {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Size::Small => "small",
                Size::Large => "large",
            })
        }
    }

    #[test]
    fn choice_takes_the_listed_names_only_and_shows_their_help() {
        let help = |s: Size| if s == Size::Large { "the big one" } else { "" };
        let cmd = clap::Command::new("t").arg(
            clap::Arg::new("size")
                .long("size")
                .value_parser(choice(&[Size::Small, Size::Large], help)),
        );
        let m = cmd
            .clone()
            .try_get_matches_from(["t", "--size", "large"])
            .unwrap();
        assert_eq!(m.get_one::<Size>("size"), Some(&Size::Large));
        let e = cmd.clone().try_get_matches_from(["t", "--size", "Large"]);
        let e = e.unwrap_err().to_string();
        assert!(e.contains("'Large'") && e.contains("small, large"), "{e}");
        let long_help = cmd.clone().render_long_help().to_string();
        assert!(long_help.contains("large: the big one"), "{long_help}");
    }

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
