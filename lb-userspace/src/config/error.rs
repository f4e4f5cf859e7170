//! What a rejected configuration reports: every problem found, each with the file, line,
//! column and field it is about, one line per problem.

use std::fmt;

use super::locate::Lines;

/// One thing wrong with a configuration, placed as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line; `None` when the problem has no place in the file (it cannot be read, or
    /// something required is missing from the whole file).
    pub line: Option<usize>,
    /// 1-based column, in characters.
    pub column: Option<usize>,
    /// Where in the schema, e.g. `service[web].backend[web2].address`; empty when the problem
    /// is with the file as a whole (it cannot be read, or is not valid TOML).
    pub field: String,
    /// What is wrong and what is allowed instead.
    pub message: String,
}

impl Problem {
    /// A problem at byte `offset` of the text `lines` indexes.
    pub(super) fn at(
        lines: &Lines<'_>,
        offset: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = offset.map(|offset| lines.line_col(offset)).unzip();
        Self {
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A configuration that cannot be used, and every reason why.
///
/// Displays one line per problem, `{origin}:{line}:{col}: {field}: {message}`, leaving out
/// the parts a problem does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    problems: Vec<Problem>,
}

impl ConfigError {
    /// `problems` must not be empty: an error without a reason helps nobody.
    pub(super) fn new(origin: &str, problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        Self {
            origin: origin.to_owned(),
            problems,
        }
    }

    /// The file could not be read at all.
    pub(super) fn unreadable(origin: &str, error: &std::io::Error) -> Self {
        let problem = Problem {
            line: None,
            column: None,
            field: String::new(),
            message: format!("cannot read: {error}"),
        };
        Self::new(origin, vec![problem])
    }

    /// What the problems call the file: its path, or `<builtin>` and the like.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Every problem found, in file order.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.origin)?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
                if let Some(column) = problem.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
            if !problem.field.is_empty() {
                write!(f, "{}: ", problem.field)?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
