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

#[cfg(test)]
mod tests {
    use super::Choice;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fruit {
        Apple,
        Pear,
    }

    impl Choice for Fruit {
        const ALL: &'static [Self] = &[Fruit::Apple, Fruit::Pear];
        fn name(self) -> &'static str {
            match self {
                Fruit::Apple => "apple",
                Fruit::Pear => "pear",
            }
        }
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_none() {
        for f in Fruit::ALL {
            assert_eq!(Fruit::from_name(f.name()), Some(*f));
        }
        assert_eq!(Fruit::from_name("Apple"), None);
        assert_eq!(Fruit::from_name("plum"), None);
        assert_eq!(Fruit::names(), "apple, pear");
    }
}
