//! Shared formatting for checker reports: each anomaly kind with a bounded list of examples.

use std::fmt;

/// Writes `kind (count):` and up to `examples_max` of `violations` (those of that kind), then how
/// many more there are. Writes nothing when the kind did not occur.
pub(crate) fn write_kind<'a, V: fmt::Display + 'a>(
    f: &mut fmt::Formatter<'_>,
    kind: impl fmt::Display,
    count: usize,
    violations: impl Iterator<Item = &'a V>,
    examples_max: usize,
) -> fmt::Result {
    if count == 0 {
        return Ok(());
    }
    writeln!(f, "  {kind} ({count}):")?;
    for violation in violations.take(examples_max) {
        writeln!(f, "    {violation}")?;
    }
    if count > examples_max {
        writeln!(f, "    ... and {} more", count - examples_max)?;
    }
    Ok(())
}
