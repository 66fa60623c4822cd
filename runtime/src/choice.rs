//! Closed sets of named options (execution provider, precision, upsampling, ...),
//! picked by name on a command line, in a request or in a config file. The
//! binaries turn a [`Choice`] into a clap value parser (`lse_cli::choice`), so the
//! libraries need no command-line crate.

/// A closed set of values, each with a stable lowercase name.
pub trait Choice: Copy + PartialEq + 'static {
    /// Every value, in the order they are listed to users.
    const ALL: &'static [Self];

    /// The value's name, as users type it.
    fn name(self) -> &'static str;

    /// One line on what the value does (empty: the name says it all).
    fn help(self) -> &'static str {
        ""
    }

    /// The value with exactly this name.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// The names, comma-separated (for error messages).
    fn names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Implements [`Choice`], `Display` (the name) and `FromStr` (the name; an unknown
/// one is an error that names it, `what` the kind of thing, and lists the names)
/// for an enum, from one line per variant: `Variant => "name", "help"`.
#[macro_export]
macro_rules! choice {
    ($ty:ident, $what:literal { $($variant:ident => $name:literal, $help:literal;)+ }) => {
        impl $crate::choice::Choice for $ty {
            const ALL: &'static [Self] = &[$($ty::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
            fn help(self) -> &'static str {
                match self {
                    $($ty::$variant => $help),+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                use $crate::choice::Choice;
                Self::from_name(s).ok_or_else(|| {
                    format!("unknown {} `{s}` (expected one of: {})", $what, Self::names())
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Choice;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fruit {
        Apple,
        Pear,
    }

    crate::choice!(Fruit, "fruit" {
        Apple => "apple", "";
        Pear => "pear", "a pear";
    });

    #[test]
    fn names_round_trip_and_unknown_ones_are_none() {
        for f in Fruit::ALL {
            assert_eq!(Fruit::from_name(f.name()), Some(*f));
        }
        assert_eq!(Fruit::from_name("Apple"), None);
        assert_eq!(Fruit::from_name("plum"), None);
        assert_eq!(Fruit::names(), "apple, pear");
        assert_eq!(Fruit::Pear.help(), "a pear");
        assert_eq!(Fruit::Pear.to_string(), "pear");
        assert_eq!("apple".parse::<Fruit>(), Ok(Fruit::Apple));
        let e = "plum".parse::<Fruit>().unwrap_err();
        assert_eq!(e, "unknown fruit `plum` (expected one of: apple, pear)");
    }
}
