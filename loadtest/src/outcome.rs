//! What the process exit code says about a run.
//!
//! A load test that lost messages has found a bug (in the server or on the
//! path to it), not a performance figure. A table that reports `lost 12` and
//! then exits 0 is easy to miss in a script or CI log, so any loss makes
//! `cinder-load` exit with [`EXIT_LOST`] and print one loud line per run.

use std::fmt;
use std::io::IsTerminal;

use crate::report::Report;

/// Everything ran and nothing was lost.
pub const EXIT_OK: i32 = 0;
/// The run could not be done (bad arguments, server did not start, port in
/// use, I/O error…).
pub const EXIT_ERROR: i32 = 1;
/// The run completed but deliveries were lost. Distinct from
/// [`EXIT_ERROR`] (and from clap's usage error, 2) so scripts can tell
/// "broken setup" from "the server dropped messages".
pub const EXIT_LOST: i32 = 3;

/// A run that lost deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// Which run: the scenario name, and for a sweep its shard count.
    pub run: String,
    /// Owed deliveries that never arrived.
    pub lost: u64,
    /// Deliveries owed over the run.
    pub expected: u64,
    /// Extra copies of deliveries, for the scenarios that fail on them
    /// (`recover`: a replay must hand out each missed message once).
    pub duplicates: u64,
    /// Deliveries that came out of order, for the scenarios that fail on
    /// them (`recover`: a replay must keep the publish order).
    pub out_of_order: u64,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LOST {} message{} in run {}: {} of {} owed deliveries arrived",
            self.lost,
            if self.lost == 1 { "" } else { "s" },
            self.run,
            self.expected.saturating_sub(self.lost),
            self.expected
        )?;
        if self.duplicates > 0 {
            write!(f, "; {} duplicated", self.duplicates)?;
        }
        if self.out_of_order > 0 {
            write!(f, "; {} out of order", self.out_of_order)?;
        }
        Ok(())
    }
}

/// The runs among `runs` (label, report) that lost deliveries. Scenarios
/// that do not track loss (`connect`, `idle`, `presence`) report 0 and so
/// never appear.
pub fn losses<'a>(runs: impl IntoIterator<Item = (String, &'a Report)>) -> Vec<Loss> {
    runs.into_iter()
        .filter(|(_, report)| report.totals.lost > 0)
        .map(|(run, report)| Loss {
            run,
            lost: report.totals.lost,
            expected: report.totals.expected,
            duplicates: 0,
            out_of_order: 0,
        })
        .collect()
}

/// The exit code of a completed run.
pub fn exit_code(losses: &[Loss]) -> i32 {
    if losses.is_empty() {
        EXIT_OK
    } else {
        EXIT_LOST
    }
}

/// Prints each loss on stderr, after the tables so it is the last thing on
/// screen; in red when stderr is a terminal.
pub fn announce(losses: &[Loss]) {
    let (on, off) = if std::io::stderr().is_terminal() {
        ("\x1b[1;31m", "\x1b[0m")
    } else {
        ("", "")
    };
    for loss in losses {
        eprintln!("{on}cinder-load: {loss}{off}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lost: u64, expected: u64) -> Report {
        let mut report = Report::default();
        report.totals.lost = lost;
        report.totals.expected = expected;
        report
    }

    #[test]
    fn no_loss_exits_zero() {
        let clean = report(0, 1000);
        let found = losses([("fanout".to_string(), &clean)]);
        assert!(found.is_empty());
        assert_eq!(exit_code(&found), EXIT_OK);
        assert_eq!(exit_code(&[]), EXIT_OK);
    }

    #[test]
    fn any_lost_message_exits_non_zero_and_names_the_run() {
        let (clean, lossy, lossier) = (report(0, 10), report(1, 1000), report(7, 70));
        let found = losses([
            ("fanout at 1 shard".to_string(), &clean),
            ("fanout at 2 shards".to_string(), &lossy),
            ("fanout at 4 shards".to_string(), &lossier),
        ]);
        assert_eq!(found.len(), 2);
        assert_eq!(exit_code(&found), EXIT_LOST);
        assert_ne!(EXIT_LOST, EXIT_OK);
        assert_eq!(
            found[0].to_string(),
            "LOST 1 message in run fanout at 2 shards: 999 of 1000 owed deliveries arrived"
        );
        assert_eq!(
            found[1].to_string(),
            "LOST 7 messages in run fanout at 4 shards: 63 of 70 owed deliveries arrived"
        );
    }

    #[test]
    fn duplicates_and_disorder_are_named_when_a_scenario_fails_on_them() {
        let loss = Loss {
            run: "recover".into(),
            lost: 0,
            expected: 100,
            duplicates: 2,
            out_of_order: 1,
        };
        assert_eq!(
            loss.to_string(),
            "LOST 0 messages in run recover: 100 of 100 owed deliveries arrived; 2 duplicated; 1 out of order"
        );
        assert_eq!(exit_code(&[loss]), EXIT_LOST);
    }
}
