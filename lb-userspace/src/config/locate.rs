//! Where something is in the file: byte offsets as lines and columns, and as field paths
//! (`service[web].backend[web2].address`) for errors that only come with an offset.

use toml::de::{DeTable, DeValue};

use super::validate::is_valid_name;

/// Finds the line and column of byte offsets in one text, each in logarithmic time, so that
/// a file with thousands of entries is not rescanned for each.
pub(super) struct Lines<'t> {
    text: &'t [u8],
    /// Byte offset where each line starts; the first is 0.
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    pub(super) fn new(text: &'t [u8]) -> Self {
        let newlines = text
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1);
        Self {
            text,
            starts: std::iter::once(0).chain(newlines).collect(),
        }
    }

    /// The 1-based line and column (in characters) of byte `offset`. Offsets past the end
    /// count as the end; an offset inside a multi-byte character counts as that character.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // At least 1: the first line starts at 0.
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        // Counting bytes that start a UTF-8 sequence counts characters.
        let column = self.text[start..offset]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count()
            + 1;
        (line, column)
    }
}

/// The path of one element of an array of tables: by its name when it has a usable one,
/// since that is what the operator searches the file for, else by its index.
pub(super) fn element(array: &str, name: Option<&str>, index: usize) -> String {
    match name.filter(|name| is_valid_name(name)) {
        Some(name) => format!("{array}[{name}]"),
        None => format!("{array}[{index}]"),
    }
}

/// The path of the innermost key or value at byte `offset` of the document, or "" if the
/// offset is not inside one.
pub(super) fn field_at(root: &DeTable<'_>, offset: usize) -> String {
    let mut found = String::new();
    visit_table(root, "", offset, 0, &mut found);
    found
}

/// The schema is five levels deep (`service[web].backend[web1].check.port`); anything deeper
/// is already wrong at a level above, and stopping keeps hostile nesting off the stack.
const MAX_DEPTH: usize = 6;

fn visit_table(table: &DeTable<'_>, prefix: &str, offset: usize, depth: usize, found: &mut String) {
    for (key, value) in table {
        let key_span = key.span();
        let key = key.get_ref();
        let path = match (prefix.is_empty(), is_bare_key(key)) {
            (true, true) => key.to_string(),
            (true, false) => format!("{key:?}"),
            (false, true) => format!("{prefix}.{key}"),
            (false, false) => format!("{prefix}.{key:?}"),
        };
        if covers(&key_span, offset) || covers(&value.span(), offset) {
            found.clone_from(&path);
        }
        visit_value(value.get_ref(), &path, offset, depth + 1, found);
    }
}

fn visit_value(value: &DeValue<'_>, path: &str, offset: usize, depth: usize, found: &mut String) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        DeValue::Table(table) => visit_table(table, path, offset, depth, found),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let name = match item.get_ref() {
                    DeValue::Table(table) => {
                        table.get("name").and_then(|name| name.get_ref().as_str())
                    }
                    _ => None,
                };
                let path = element(path, name, index);
                if covers(&item.span(), offset) {
                    found.clone_from(&path);
                }
                visit_value(item.get_ref(), &path, offset, depth + 1, found);
            }
        }
        _ => {}
    }
}

fn covers(span: &std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && (offset < span.end || offset == span.start)
}

/// Keys that need no quotes in TOML; others are shown quoted and escaped, so a path never
/// spans lines.
fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let lines = Lines::new("a = 1\nbé = \"x\"\n".as_bytes());
        assert_eq!(lines.line_col(0), (1, 1));
        assert_eq!(lines.line_col(4), (1, 5));
        assert_eq!(lines.line_col(5), (1, 6));
        assert_eq!(lines.line_col(6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(lines.line_col(11), (2, 5));
        assert_eq!(lines.line_col(1000), (3, 1));
        assert_eq!(Lines::new(b"").line_col(3), (1, 1));
    }

    #[test]
    fn paths_use_names_then_indices() {
        let text =
            "[[service]]\nname = \"web\"\n[[service.backend]]\nname = \"bad name\"\nport = 1\n";
        let root = DeTable::parse(text).unwrap();
        let offset = text.find("port").unwrap();
        assert_eq!(
            field_at(root.get_ref(), offset),
            "service[web].backend[0].port"
        );
        assert_eq!(
            field_at(root.get_ref(), text.find("\"web\"").unwrap()),
            "service[web].name"
        );
    }
}
