//! Field paths and where they sit in the text.
//!
//! Serde hands the validator plain values, so a semantic error ("pool does not exist") knows
//! its field but not its position. We keep toml's span-preserving tree ([`DeTable`]) beside the
//! typed values and walk it along the field path to find the value's byte range; a field that
//! was never written (a default, a missing required key) falls back to the nearest enclosing
//! table or array that *was* written, which is where the operator would add it.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a [`FieldPath`]: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key in a table, e.g. `service` or `gateways`.
    Key(String),
    /// An index into an array, e.g. the `1` of `service[1]`.
    Index(usize),
}

/// Where a value lives in the document, e.g. `pool.gateways.backends[0].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The document root (renders as the empty string).
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// This path extended by a table key.
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        FieldPath(segments)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        FieldPath(segments)
    }

    /// The enclosing path (the root's parent is the root).
    pub fn parent(&self) -> Self {
        let mut segments = self.0.clone();
        segments.pop();
        FieldPath(segments)
    }

    /// The steps, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether `self` is `prefix` or lies inside it.
    pub fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Converts serde_path_to_error's path (what failed during deserialization).
    pub fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let segments = path
            .iter()
            .filter_map(|segment| match segment {
                S::Seq { index } => Some(Segment::Index(*index)),
                S::Map { key } => Some(Segment::Key(key.clone())),
                S::Enum { variant } => Some(Segment::Key(variant.clone())),
                // Only produced by untagged/flattened types, which the schema does not use.
                S::Unknown => None,
            })
            .collect();
        FieldPath(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for segment in &self.0 {
            match segment {
                Segment::Index(i) => write!(f, "[{i}]")?,
                Segment::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    // Pool and backend names are operator-chosen; quote the ones a TOML bare
                    // key could not spell so the path stays unambiguous (`pool."a.b"`).
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
            first = false;
        }
        Ok(())
    }
}

/// The byte range of the value at `path`, or of its nearest written ancestor.
pub fn locate(root: &DeTable<'_>, path: &FieldPath) -> Range<usize> {
    // The root table's own span is empty (0..0), which `line_col` maps to 1:1: the right
    // answer for "a top-level key is missing".
    let mut best = 0..0;
    let mut table = Some(root);
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    for segment in path.segments() {
        let next = match segment {
            Segment::Key(k) => table.and_then(|t| t.get(k.as_str())),
            Segment::Index(i) => array.and_then(|a| a.get(*i)),
        };
        let Some(next) = next else { break };
        best = next.span();
        table = None;
        array = None;
        match next.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    best
}

/// Removes the value at `path`, or the closest table entry above it, so that a retried
/// deserialization gets past a bad value. Returns the path actually removed, or `None` when
/// nothing on the path exists (the caller must then stop retrying).
pub fn remove(root: &mut DeTable<'_>, path: &FieldPath) -> Option<FieldPath> {
    // Arrays cannot shrink in place (DeArray only derefs to a slice), and removing an element
    // would renumber its siblings anyway, so we cut at the deepest *table key* on the path.
    let segments = path.segments();
    let mut deepest_key = None;
    {
        let mut table = Some(&*root);
        let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
        for (depth, segment) in segments.iter().enumerate() {
            let next = match segment {
                Segment::Key(k) => {
                    let found = table.and_then(|t| t.get(k.as_str()));
                    if found.is_some() {
                        deepest_key = Some(depth);
                    }
                    found
                }
                Segment::Index(i) => array.and_then(|a| a.get(*i)),
            };
            let Some(next) = next else { break };
            table = None;
            array = None;
            match next.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
    }
    let depth = deepest_key?;
    remove_at(root, &segments[..=depth])
}

fn remove_at(root: &mut DeTable<'_>, segments: &[Segment]) -> Option<FieldPath> {
    let (last, parents) = segments.split_last()?;
    let Segment::Key(last_key) = last else {
        return None;
    };
    let mut value: Option<&mut DeValue<'_>> = None;
    let mut table: Option<&mut DeTable<'_>> = Some(root);
    for segment in parents {
        let next: &mut DeValue<'_> = match (segment, table.take(), value.take()) {
            (Segment::Key(k), Some(t), _) => t.get_mut(k.as_str())?.get_mut(),
            (Segment::Index(i), _, Some(DeValue::Array(a))) => a.get_mut(*i)?.get_mut(),
            _ => return None,
        };
        match next {
            DeValue::Table(t) => table = Some(t),
            other => value = Some(other),
        }
    }
    table?.remove(last_key.as_str())?;
    Some(FieldPath(segments.to_vec()))
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    // A span may in theory end inside a multi-byte character; step back to a boundary
    // rather than slicing at a non-boundary, which would panic.
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[node]\nname = \"lb1\"\n\n[[service]]\nname = \"a\"\n\n[[service]]\nname = \"b\"\nlisten = \"x\"\n\n[pool.gw]\nbackends = [ { name = \"w\", weight = 0 } ]\n";

    fn at(path: &FieldPath) -> (usize, usize) {
        let root = DeTable::parse(DOC).expect("valid toml");
        line_col(DOC, locate(root.get_ref(), path).start)
    }

    #[test]
    fn display_matches_the_documented_shape() {
        let p = FieldPath::root()
            .key("pool")
            .key("gateways")
            .key("backends")
            .index(0)
            .key("weight");
        assert_eq!(p.to_string(), "pool.gateways.backends[0].weight");
        assert_eq!(
            FieldPath::root().key("service").index(1).to_string(),
            "service[1]"
        );
        assert_eq!(
            FieldPath::root().key("pool").key("a.b").to_string(),
            "pool.\"a.b\""
        );
    }

    #[test]
    fn locates_values_and_falls_back_to_the_parent() {
        let service1 = FieldPath::root().key("service").index(1);
        assert_eq!(at(&service1.key("listen")), (9, 10));
        // Missing key: the [[service]] header of that element.
        assert_eq!(at(&service1.key("pool")), (7, 1));
        let weight = FieldPath::root()
            .key("pool")
            .key("gw")
            .key("backends")
            .index(0)
            .key("weight");
        assert_eq!(at(&weight), (12, 37));
        assert_eq!(at(&FieldPath::root().key("dns").key("zone")), (1, 1));
    }

    #[test]
    fn remove_cuts_at_the_deepest_table_key() {
        let mut root = DeTable::parse(DOC).expect("valid toml").into_inner();
        let weight = FieldPath::root()
            .key("pool")
            .key("gw")
            .key("backends")
            .index(0)
            .key("weight");
        assert_eq!(remove(&mut root, &weight), Some(weight.clone()));
        // Gone now: the next cut is the closest table entry still on the path.
        let backends = FieldPath::root().key("pool").key("gw").key("backends");
        assert_eq!(remove(&mut root, &weight), Some(backends));
        assert_eq!(remove(&mut root, &FieldPath::root().key("nothing")), None);
        let bad_elem = FieldPath::root().key("service").index(7);
        assert_eq!(
            remove(&mut root, &bad_elem),
            Some(FieldPath::root().key("service"))
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("a\néé = 1", 7), (2, 4));
        assert_eq!(line_col("abc", 99), (1, 4));
        assert_eq!(line_col("é", 1), (1, 1));
    }
}
