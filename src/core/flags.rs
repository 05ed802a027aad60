//! Defaults written once: a flag's default lives in its `#[arg(default_value...)]` only,
//! and the `Default` of its settings struct is what clap makes of an empty command line.

/// `T` as an empty command line sets it: every field at its flag's default. The
/// environment is not read (a `BINDLET_*` variable must not change a `Default`).
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|a| a.env(None::<&str>))
        .no_binary_name(true);
    // Every flag of the agent has a default or is optional, so an empty command line
    // always parses; a flag added without one fails the tests that build the defaults.
    match cmd
        .try_get_matches_from(std::iter::empty::<&str>())
        .and_then(|m| T::from_arg_matches(&m))
    {
        Ok(t) => t,
        Err(e) => panic!("a flag has no default: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::CheckMode;
    use std::time::Duration;

    #[derive(clap::Args, Debug)]
    struct Example {
        #[arg(long, env = "BINDLET_FLAGS_TEST_MODE", value_enum, default_value_t = CheckMode::Warn)]
        mode: CheckMode,
        #[arg(long, default_value = "7")]
        count: u32,
        #[arg(long)]
        optional: Option<String>,
        #[arg(long, default_value = "90s", value_parser = crate::api::duration::parse_duration)]
        wait: Duration,
    }

    #[test]
    fn defaults_are_the_flags_defaults_and_ignore_the_environment() {
        // SAFETY: this test binary sets no other environment variable and reads this one
        // only here.
        unsafe { std::env::set_var("BINDLET_FLAGS_TEST_MODE", "off") };
        let e: Example = defaults();
        assert_eq!(e.mode, CheckMode::Warn);
        assert_eq!(e.count, 7);
        assert_eq!(e.optional, None);
        assert_eq!(e.wait, Duration::from_secs(90));
    }
}
