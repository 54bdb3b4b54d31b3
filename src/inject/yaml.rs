//! YAML in and out for `inject`: read a multi-document stream one document at a time, within the limits
//! of [`super::limits`], look keys up by their text, build new nodes, write the trees back.
//!
//! Kubernetes reads manifests with YAML 1.1 rules (`0644` is an octal number, `on` is `true`), the parser
//! here follows YAML 1.2. To never change what Kubernetes reads, plain (unquoted) scalars are not
//! interpreted at all: they are kept as the text that was written and written back the same. Quoted and
//! block scalars are strings under both rules and are written back with whatever quoting the text needs.
//! New nodes are built as typed values, so the emitter quotes them as needed.

use std::borrow::Cow;
use std::fmt;

use saphyr::{Mapping, Scalar, ScalarStyle, Yaml, YamlEmitter, YamlLoader};
use saphyr_parser::{Event, Marker, Parser, SpannedEventReceiver, StrInput};

use super::limits::{self, Budget};

/// A YAML node that borrows from the input (new nodes are `'static`).
pub type Node<'a> = Yaml<'a>;

/// A stream that could not be read, or that was refused while it was read (a limit of
/// [`super::limits`], a tag on a collection): the 0-based index of the document, the 1-based line and
/// column, and the reason.
#[derive(Debug)]
pub struct SyntaxError {
    pub document: usize,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

/// A YAML feature that Kubernetes manifests do not use and that could not be written back faithfully.
#[derive(Debug)]
pub struct Unsupported(pub String);

/// Loads every document of `input`, empty ones included (as null), so that indexes match the input.
pub fn load(input: &str) -> Result<Vec<Node<'_>>, SyntaxError> {
    documents(input).collect()
}

/// The documents of `input`, one at a time, each built only after all of its events passed the
/// account of [`Budget`]: an alias past the budget is refused before it is expanded. Empty documents
/// come as null. After an error the iterator ends.
pub fn documents(input: &str) -> Documents<'_> {
    Documents {
        parser: Parser::new_from_str(input),
        budget: Budget::new(input.len()),
        loader: new_loader(),
        done: 0,
        finished: false,
    }
}

/// The iterator of [`documents`].
pub struct Documents<'a> {
    /// Pulled event by event: saphyr's `Parser::load` recurses once per nesting level, before any
    /// receiver could stop it, while the event iterator keeps its state on the heap.
    parser: Parser<'a, StrInput<'a>>,
    budget: Budget,
    /// Builds the current document; a fresh one per document, so only one tree is alive at a time.
    loader: YamlLoader<'a, Yaml<'a>>,
    /// Documents completed.
    done: usize,
    finished: bool,
}

fn new_loader<'a>() -> YamlLoader<'a, Yaml<'a>> {
    let mut loader = YamlLoader::default();
    // Keep scalars as written; see the module comment.
    loader.early_parse(false);
    // The budget has already bounded every alias; saphyr's own node budget (100 000 nodes made by
    // aliases) must not refuse first what the budget let through.
    loader.alias_limit(usize::try_from(limits::MAX_DOCUMENT_NODES).unwrap_or(usize::MAX));
    loader
}

impl<'a> Documents<'a> {
    fn fail(&mut self, at: &Marker, reason: String) -> SyntaxError {
        self.finished = true;
        SyntaxError {
            document: self.done,
            line: at.line(),
            column: at.col() + 1,
            reason,
        }
    }
}

impl<'a> Iterator for Documents<'a> {
    type Item = Result<Node<'a>, SyntaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let (event, span) = match self.parser.next_event() {
                None => break,
                Some(Err(e)) => return Some(Err(self.fail(e.marker(), e.info().to_string()))),
                Some(Ok(next)) => next,
            };
            if event == Event::StreamEnd {
                break;
            }
            if let Err(refusal) = self.budget.account(&event) {
                return Some(Err(self.fail(&span.start, refusal.to_string())));
            }
            let document_end = event == Event::DocumentEnd;
            self.loader.on_event(event, span);
            if let Some(e) = self.loader.error().cloned() {
                return Some(Err(self.fail(e.marker(), e.info().to_string())));
            }
            if document_end {
                let loader = std::mem::replace(&mut self.loader, new_loader());
                self.done += 1;
                // A document end always completes exactly one document (an empty one as `BadValue`).
                return Some(Ok(loader.into_documents().pop().unwrap_or(Yaml::BadValue)));
            }
        }
        self.finished = true;
        None
    }
}

/// Rewrites scalars into the two forms the rest of the module deals with: plain text kept as written
/// (`Representation` with the plain style), or a string value. Fails on tags other than `!!str`, which a
/// Kubernetes manifest has no use for and which would not survive the round trip.
pub fn normalize(node: Node<'_>) -> Result<Node<'_>, Unsupported> {
    Ok(match node {
        Yaml::Representation(text, style, tag) => match (style, tag) {
            (ScalarStyle::Plain, None) if text.is_empty() => Yaml::Value(Scalar::Null),
            // A plain scalar spanning an empty line holds a line break; it is a string either way, and
            // written back as one it stays a string.
            (ScalarStyle::Plain, None) if !text.contains('\n') => {
                Yaml::Representation(text, ScalarStyle::Plain, None)
            }
            (_, None) => Yaml::Value(Scalar::String(text)),
            (_, Some(tag)) if tag.is_yaml_core_schema() && tag.suffix == "str" => {
                Yaml::Value(Scalar::String(text))
            }
            (_, Some(tag)) => {
                return Err(Unsupported(format!(
                    "the YAML tag {} on {text:?}",
                    limits::tag_name(&tag)
                )));
            }
        },
        Yaml::Sequence(items) => Yaml::Sequence(
            items
                .into_iter()
                .map(normalize)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Yaml::Mapping(entries) => {
            let mut out = Mapping::new();
            for (key, value) in entries {
                out.insert(normalize(key)?, normalize(value)?);
            }
            Yaml::Mapping(out)
        }
        Yaml::Tagged(tag, _) => {
            return Err(Unsupported(format!(
                "the YAML tag {}",
                limits::tag_name(&tag)
            )));
        }
        other => other,
    })
}

/// Writes documents as one stream, each starting with `---`.
pub fn emit(documents: &[Node<'_>]) -> Result<String, EmitError> {
    let mut out = String::new();
    for document in documents {
        emit_into(document, &mut out, usize::MAX)?;
    }
    Ok(out)
}

/// Why a document could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// `out` would pass the limit given to [`emit_into`].
    #[error("the output would be larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Emit(#[from] saphyr::EmitError),
}

/// Appends one document, starting with `---`, to `out`, refusing to let `out` grow past `limit` bytes:
/// the output of a small but deeply indented or heavily aliased tree is checked as it is written, not
/// after.
pub fn emit_into(document: &Node<'_>, out: &mut String, limit: usize) -> Result<(), EmitError> {
    let mut writer = Capped {
        out,
        limit,
        over: false,
    };
    let written = {
        let mut emitter = YamlEmitter::new(&mut writer);
        // Scripts in `args` stay readable as literal blocks.
        emitter.multiline(true);
        emitter.dump(document)
    };
    let written = written.and_then(|()| {
        if writer.out.ends_with('\n') {
            Ok(())
        } else {
            fmt::Write::write_str(&mut writer, "\n").map_err(saphyr::EmitError::from)
        }
    });
    match written {
        Ok(()) => Ok(()),
        Err(_) if writer.over => Err(EmitError::TooLarge(limit)),
        Err(e) => Err(e.into()),
    }
}

/// A `String` writer that fails rather than pass `limit` bytes.
struct Capped<'o> {
    out: &'o mut String,
    limit: usize,
    over: bool,
}

impl fmt::Write for Capped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.out.len().saturating_add(s.len()) > self.limit {
            self.over = true;
            return Err(fmt::Error);
        }
        self.out.push_str(s);
        Ok(())
    }
}

/// How many nodes a tree has: scalars, sequences and mappings, keys included.
pub fn count_nodes(node: &Node<'_>) -> u64 {
    match node {
        Yaml::Sequence(items) => items.iter().map(count_nodes).fold(1, u64::saturating_add),
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| count_nodes(k).saturating_add(count_nodes(v)))
            .fold(1, u64::saturating_add),
        Yaml::Tagged(_, inner) => count_nodes(inner),
        _ => 1,
    }
}

/// The text of a scalar (plain as written, or a string value); `None` for anything else.
pub fn text<'n>(node: &'n Node<'_>) -> Option<&'n str> {
    match node {
        Yaml::Representation(text, ScalarStyle::Plain, None) => Some(text),
        Yaml::Value(Scalar::String(text)) => Some(text),
        _ => None,
    }
}

/// True for a null scalar (`~`, `null`, or nothing) and for an empty document.
pub fn is_null(node: &Node<'_>) -> bool {
    match node {
        Yaml::Value(Scalar::Null) | Yaml::BadValue => true,
        Yaml::Representation(text, ScalarStyle::Plain, None) => {
            matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// The value under `key` in a mapping node.
pub fn get<'n, 'a>(node: &'n Node<'a>, key: &str) -> Option<&'n Node<'a>> {
    match node {
        Yaml::Mapping(map) => map
            .iter()
            .find(|(k, _)| text(k) == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The value under `key` in a mapping node, mutably.
pub fn get_mut<'n, 'a>(node: &'n mut Node<'a>, key: &str) -> Option<&'n mut Node<'a>> {
    match node {
        Yaml::Mapping(map) => map
            .iter_mut()
            .find(|(k, _)| text(k) == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Follows a path of keys through nested mappings.
pub fn path<'n, 'a>(node: &'n Node<'a>, keys: &[&str]) -> Option<&'n Node<'a>> {
    keys.iter().try_fold(node, |node, key| get(node, key))
}

/// Follows a path of keys through nested mappings, mutably.
pub fn path_mut<'n, 'a>(node: &'n mut Node<'a>, keys: &[&str]) -> Option<&'n mut Node<'a>> {
    keys.iter().try_fold(node, |node, key| get_mut(node, key))
}

/// Sets `key` in a mapping node: in place when the key exists (the order of keys is kept), at the end,
/// or before the key `before` when that exists, otherwise. Does nothing on a node that is not a mapping.
pub fn set<'a>(node: &mut Node<'a>, key: &str, value: Node<'a>, before: Option<&str>) {
    if let Some(slot) = get_mut(node, key) {
        *slot = value;
        return;
    }
    let Yaml::Mapping(map) = node else { return };
    let position = before.and_then(|b| map.keys().position(|k| text(k) == Some(b)));
    match position {
        None => {
            map.insert(string(key), value);
        }
        Some(at) => {
            let old = std::mem::take(map);
            for (index, (k, v)) in old.into_iter().enumerate() {
                if index == at {
                    map.insert(string(key), value.clone());
                }
                map.insert(k, v);
            }
        }
    }
}

/// Removes `key` from a mapping node.
pub fn remove(node: &mut Node<'_>, key: &str) {
    if let Yaml::Mapping(map) = node {
        map.retain(|k, _| text(k) != Some(key));
    }
}

/// The mapping under `key`, created empty when it is absent or null. `None` when something else is there.
pub fn mapping_entry<'n, 'a>(node: &'n mut Node<'a>, key: &str) -> Option<&'n mut Node<'a>> {
    if get(node, key).is_none_or(is_null) {
        set(node, key, Yaml::Mapping(Mapping::new()), None);
    }
    get_mut(node, key).filter(|n| n.is_mapping())
}

/// A string node.
pub fn string(value: impl Into<String>) -> Node<'static> {
    Yaml::Value(Scalar::String(Cow::Owned(value.into())))
}

/// An integer node.
pub fn integer(value: i64) -> Node<'static> {
    Yaml::Value(Scalar::Integer(value))
}

/// A boolean node.
pub fn boolean(value: bool) -> Node<'static> {
    Yaml::Value(Scalar::Boolean(value))
}

/// A mapping node with keys in the given order.
pub fn mapping<'a>(entries: impl IntoIterator<Item = (&'static str, Node<'a>)>) -> Node<'a> {
    Yaml::Mapping(
        entries
            .into_iter()
            .map(|(k, v)| (string(k), v))
            .collect::<Mapping<'a>>(),
    )
}

/// A sequence of strings.
pub fn strings(values: &[&str]) -> Node<'static> {
    Yaml::Sequence(values.iter().map(|v| string(*v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(input: &str) -> String {
        let documents = load(input)
            .expect("loads")
            .into_iter()
            .map(|d| normalize(d).expect("normalizes"))
            .collect::<Vec<_>>();
        emit(&documents).expect("emits")
    }

    #[test]
    fn plain_scalars_are_written_back_as_written() {
        let out = round_trip("mode: 0644\nflag: on\nversion: 1.10\nhex: 0x1F\n");
        assert_eq!(out, "---\nmode: 0644\nflag: on\nversion: 1.10\nhex: 0x1F\n");
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let out = round_trip("a: \"on\"\nb: '0644'\nc: \"it's\"\nd: \"x\\ty\"\ne: !!str 12\n");
        assert_eq!(
            out,
            "---\na: \"on\"\nb: \"0644\"\nc: \"it's\"\nd: \"x\\ty\"\ne: \"12\"\n"
        );
    }

    #[test]
    fn a_second_round_trip_changes_nothing() {
        let input =
            "a: |\n  line one\n    line two\nb: \"two\\nlines\\n\"\nc: [x, 'y']\nd:\ne: {}\n";
        let once = round_trip(input);
        assert_eq!(round_trip(&once), once);
    }

    #[test]
    fn a_plain_scalar_with_a_line_break_becomes_a_string() {
        let out = round_trip("a: one\n\n  two\n");
        assert_eq!(load(&out).expect("loads").len(), 1);
        assert_eq!(out, "---\na: |-\n  one\n  two\n");
    }

    #[test]
    fn empty_documents_are_null_and_errors_name_the_document() {
        let documents = load("---\n---\na: 1\n---\n...\n").expect("loads");
        let empty: Vec<bool> = documents.iter().map(is_null).collect();
        assert_eq!(empty, [true, false, true]);
        let e = load("a: 1\n---\nb: 2\n  c: 3\n").expect_err("fails");
        assert_eq!((e.document, e.line, e.column), (1, 4, 4));
    }

    #[test]
    fn the_deepest_documents_allowed_fit_a_test_threads_stack() {
        // Test threads have 2 MiB of stack, less than the command's worker; unoptimised frames are
        // the largest.
        let depth = limits::MAX_DEPTH;
        let flow = format!("{}x{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(round_trip(&flow), format!("---\n{}x\n", "- ".repeat(depth)));
        let block: String = (0..depth)
            .map(|level| format!("{}k:\n", "  ".repeat(level)))
            .collect();
        let out = round_trip(&block);
        assert_eq!(load(&out).expect("loads").len(), 1);
        let e = load(&format!("[{flow}]")).expect_err("one level too deep");
        assert_eq!((e.line, e.column), (1, depth + 1));
        assert!(e.reason.contains("levels deep"), "{}", e.reason);
    }

    #[test]
    fn documents_come_one_at_a_time_and_stop_at_the_first_refusal() {
        let mut documents = documents("a: 1\n---\nb: &x [1]\nc: *x\n---\nd: *x\n---\ne: 5\n");
        assert!(documents.next().is_some_and(|d| d.is_ok()));
        assert!(documents.next().is_some_and(|d| d.is_ok()));
        let e = documents
            .next()
            .and_then(Result::err)
            .expect("an alias into another document");
        assert_eq!((e.document, e.line, e.column), (2, 6, 4));
        assert!(documents.next().is_none());
    }

    #[test]
    fn custom_tags_are_refused() {
        let documents = load("a: !secret x\n").expect("loads");
        let mut documents = documents.into_iter();
        let document = documents.next().expect("one document");
        assert!(normalize(document).is_err());
    }

    #[test]
    fn set_keeps_the_order_and_can_insert_before_a_key() {
        let mut node = mapping([("a", integer(1)), ("c", integer(3))]);
        set(&mut node, "b", integer(2), Some("c"));
        set(&mut node, "a", integer(10), None);
        assert_eq!(emit(&[node]).expect("emits"), "---\na: 10\nb: 2\nc: 3\n");
    }
}
