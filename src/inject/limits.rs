//! The limits `inject` holds its input to, and the accounting that enforces them while the YAML is read.
//!
//! YAML lets a small file stand for a huge tree: an alias repeats a whole anchored node, and anchors can
//! hold aliases of other anchors (the "billion laughs"). Nesting costs stack in every recursive walk of
//! the tree (saphyr's emitter, drop, clone). So each parser event is weighed by [`Budget::account`]
//! *before* it is handed to the tree builder: an alias is refused while it is still a reference, and a
//! collection one level too deep before it is opened. The accounting is arithmetic on the events alone
//! (no tree), so it is cheap and cannot itself be made to blow up.
//!
//! The sizes are chosen so that `inject` stays under 256 MiB of memory for any input it accepts; the
//! README's inject section and SECURITY.md list them.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Tag};

const MIB: usize = 1024 * 1024;

/// The largest input read, per file or stdin: far above any set of manifests (the Kubernetes API itself
/// refuses objects over 1.5 MiB), low enough that its tree, its output and the parser's buffers fit the
/// memory bound together.
pub const MAX_INPUT_BYTES: usize = 10 * MIB;

/// How many times its own size an input may grow to once its aliases are written out. Anchors in real
/// manifests (a shared `env` list, common labels, resources) repeat a block a few times, a small
/// multiple of the file; an alias bomb needs a factor in the thousands to hurt, so it is refused after a
/// handful of aliases.
pub const EXPANSION_FACTOR: u64 = 10;

/// The expansion allowed however small the input: a few kilobytes of manifest may lean on anchors more
/// than ten-fold without costing anything worth refusing.
pub const MIN_EXPANSION_BYTES: u64 = 64 * 1024;

/// The expansion allowed however large the input: with [`MAX_INPUT_BYTES`] of input, ten times would be
/// more than the memory bound leaves for the tree.
pub const MAX_EXPANSION_BYTES: u64 = 64 * MIB as u64;

/// The deepest nesting of sequences and mappings. Manifests, CRD schemas included, stay well under 100
/// levels; the bound keeps every recursive walk of the tree (ours and saphyr's) far from the stack's end.
pub const MAX_DEPTH: usize = 128;

/// The most nodes one document may have: as it is read (its own, those aliases stand for, and saphyr's
/// copy of each anchored node, which its loader keeps to resolve aliases from), and again once the
/// sidecar is in (about 150 nodes per pod template, which adds up in a `List`). A node costs about
/// 250 bytes in saphyr's tree: 400 000 of them are about 100 MiB, the largest single document that
/// fits the memory bound beside the input and the output.
pub const MAX_DOCUMENT_NODES: u64 = 400_000;

/// The most output written for all inputs together: the sidecar adds about 3 KiB per pod template, and
/// the whole output is held until every input has been read (nothing is written on an error).
pub const MAX_OUTPUT_BYTES: usize = 64 * MIB;

/// The expansion budget of an input of `input_len` bytes: [`EXPANSION_FACTOR`] times its size, no less
/// than [`MIN_EXPANSION_BYTES`] and no more than [`MAX_EXPANSION_BYTES`].
pub fn expansion_budget(input_len: usize) -> u64 {
    u64::try_from(input_len)
        .unwrap_or(u64::MAX)
        .saturating_mul(EXPANSION_FACTOR)
        .clamp(MIN_EXPANSION_BYTES, MAX_EXPANSION_BYTES)
}

/// What a node stands for once its aliases are written out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    /// Its text: the bytes of each scalar's value plus one for every node (so that empty values and
    /// collections weigh something). Without aliases this is at most about the input's own size.
    pub bytes: u64,
    /// Its nodes: scalars, sequences and mappings.
    pub nodes: u64,
}

impl Size {
    /// The size of one scalar with this value.
    pub fn scalar(value: &str) -> Size {
        Size {
            bytes: u64::try_from(value.len())
                .unwrap_or(u64::MAX)
                .saturating_add(1),
            nodes: 1,
        }
    }

    /// What a collection weighs itself, without its items.
    pub const COLLECTION: Size = Size { bytes: 1, nodes: 1 };

    fn plus(self, other: Size) -> Size {
        Size {
            bytes: self.bytes.saturating_add(other.bytes),
            nodes: self.nodes.saturating_add(other.nodes),
        }
    }

    fn minus(self, earlier: Size) -> Size {
        Size {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            nodes: self.nodes.saturating_sub(earlier.nodes),
        }
    }
}

/// Why an event was refused. The text is the reason a user reads after the position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The aliases expand the input past its budget (in bytes).
    Expansion { budget: u64 },
    /// One document has more than [`MAX_DOCUMENT_NODES`] nodes.
    Nodes,
    /// A collection nested deeper than [`MAX_DEPTH`].
    Depth,
    /// An alias to an anchor not complete before it in the same document.
    UnknownAlias,
    /// A tag on a sequence or a mapping other than its own type's.
    Tag { tag: String, on: &'static str },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Expansion { budget } => write!(
                f,
                "aliases expand the input past its budget of {budget} bytes ({EXPANSION_FACTOR} times its size, \
                 at least {} KiB, at most {} MiB); refused as an alias bomb",
                MIN_EXPANSION_BYTES / 1024,
                MAX_EXPANSION_BYTES / MIB as u64
            ),
            Refusal::Nodes => write!(
                f,
                "the document has more than {MAX_DOCUMENT_NODES} YAML nodes (aliases counted as written out); split it"
            ),
            Refusal::Depth => write!(f, "nested more than {MAX_DEPTH} levels deep"),
            Refusal::UnknownAlias => f.write_str(
                "an alias to an anchor that is not complete before it in the same document",
            ),
            Refusal::Tag { tag, on } => write!(f, "the YAML tag {tag} on a {on} is not supported"),
        }
    }
}

/// How a tag reads in a message: `!!seq` for the core schema's, as written otherwise.
pub fn tag_name(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

/// The running account of one input stream. Feed it every event in order; an event it refuses must not
/// reach the tree builder, and the stream must not be read further.
///
/// What is counted is what gets built: every node once, each alias the whole size of its anchor again,
/// and each anchored node once more, for the copy saphyr's loader keeps of it (without that, anchors
/// nested in anchors would copy the same subtree once per level, unaccounted).
#[derive(Debug)]
pub struct Budget {
    /// The most bytes the whole stream may expand to.
    limit: u64,
    /// The tree so far, aliases written out: `bytes` over the whole stream, `nodes` in this document.
    total: Size,
    /// The copies of anchored nodes, counted like `total`.
    copies: Size,
    /// The collections open now: their anchor id (0 for none) and `total` when they started.
    open: Vec<(usize, Size)>,
    /// The anchors complete so far in this document, by the parser's anchor id.
    anchors: HashMap<usize, Size>,
}

impl Budget {
    /// The account of an input of `input_len` bytes.
    pub fn new(input_len: usize) -> Budget {
        Budget::with_limit(expansion_budget(input_len))
    }

    /// An account allowing the stream to expand to `limit` bytes.
    pub fn with_limit(limit: u64) -> Budget {
        Budget {
            limit,
            total: Size::default(),
            copies: Size::default(),
            open: Vec::new(),
            anchors: HashMap::new(),
        }
    }

    /// The bytes built so far: the stream with its aliases written out, and the copies of its anchors.
    pub fn expanded_bytes(&self) -> u64 {
        self.total.bytes.saturating_add(self.copies.bytes)
    }

    /// Takes one event into account, or refuses it.
    pub fn account(&mut self, event: &Event<'_>) -> Result<(), Refusal> {
        match event {
            Event::DocumentStart(_) | Event::DocumentEnd => {
                // Anchors never reach across documents, and each document has its own node count.
                self.anchors.clear();
                self.open.clear();
                self.total.nodes = 0;
                self.copies.nodes = 0;
                Ok(())
            }
            Event::Scalar(value, _, anchor, _) => {
                let size = Size::scalar(value);
                self.add(size)?;
                self.complete(*anchor, size)
            }
            Event::SequenceStart(anchor, tag) => {
                self.open_collection(*anchor, tag.as_deref(), "seq")
            }
            Event::MappingStart(anchor, tag) => {
                self.open_collection(*anchor, tag.as_deref(), "map")
            }
            Event::SequenceEnd | Event::MappingEnd => match self.open.pop() {
                Some((anchor, start)) => self.complete(anchor, self.total.minus(start)),
                None => Ok(()),
            },
            Event::Alias(id) => {
                let size = *self.anchors.get(id).ok_or(Refusal::UnknownAlias)?;
                self.add(size)
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => Ok(()),
        }
    }

    fn open_collection(
        &mut self,
        anchor: usize,
        tag: Option<&Tag>,
        kind: &'static str,
    ) -> Result<(), Refusal> {
        // Like a scalar's `!!str`, a collection's own type may be spelled out; any other tag would be
        // dropped on the way out (saphyr keeps only custom tags, and those we do not write back).
        if let Some(tag) = tag.filter(|t| !(t.is_yaml_core_schema() && t.suffix == kind)) {
            return Err(Refusal::Tag {
                tag: tag_name(tag),
                on: if kind == "seq" { "sequence" } else { "mapping" },
            });
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(Refusal::Depth);
        }
        self.open.push((anchor, self.total));
        self.add(Size::COLLECTION)
    }

    /// Adds a node (or what an alias stands for) to the tree, refusing it past a limit.
    fn add(&mut self, size: Size) -> Result<(), Refusal> {
        let total = self.total.plus(size);
        Self::check(self.limit, total.plus(self.copies))?;
        self.total = total;
        Ok(())
    }

    /// Records a node just completed under its anchor id (the parser numbers anchors from 1), with the
    /// copy the loader will make of it.
    fn complete(&mut self, anchor: usize, size: Size) -> Result<(), Refusal> {
        if anchor == 0 {
            return Ok(());
        }
        let copies = self.copies.plus(size);
        Self::check(self.limit, self.total.plus(copies))?;
        self.copies = copies;
        self.anchors.insert(anchor, size);
        Ok(())
    }

    fn check(limit: u64, built: Size) -> Result<(), Refusal> {
        if built.bytes > limit {
            return Err(Refusal::Expansion { budget: limit });
        }
        if built.nodes > MAX_DOCUMENT_NODES {
            return Err(Refusal::Nodes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saphyr_parser::Parser;

    /// Accounts every event of `input` with `limit`; the refusal, or the bytes expanded.
    fn run(input: &str, limit: u64) -> Result<u64, Refusal> {
        let mut budget = Budget::with_limit(limit);
        for event in Parser::new_from_str(input) {
            let (event, _) = event.expect("valid YAML");
            budget.account(&event)?;
        }
        Ok(budget.expanded_bytes())
    }

    #[test]
    fn the_budget_is_ten_times_the_input_within_a_floor_and_a_cap() {
        assert_eq!(expansion_budget(0), 64 * 1024);
        assert_eq!(expansion_budget(6_000), 64 * 1024);
        assert_eq!(expansion_budget(6_554), 65_540);
        assert_eq!(expansion_budget(250_000), 2_500_000);
        assert_eq!(expansion_budget(6 * MIB), 60 * MIB as u64);
        assert_eq!(expansion_budget(7 * MIB), 64 * MIB as u64);
        assert_eq!(expansion_budget(MAX_INPUT_BYTES), MAX_EXPANSION_BYTES);
        assert_eq!(expansion_budget(usize::MAX), MAX_EXPANSION_BYTES);
    }

    #[test]
    fn an_anchor_counts_once_and_each_alias_adds_its_size() {
        // Scalars weigh their value plus one; a collection weighs one plus its items.
        assert_eq!(run("abc", 100), Ok(4));
        assert_eq!(run("[abc, d]", 100), Ok(1 + 4 + 2));
        // The anchored node, its copy in the loader, then the alias.
        assert_eq!(
            run("a: &x [abc, d]\nb: *x\n", 100),
            Ok(1 + 2 + 7 + 7 + 2 + 7)
        );
        assert_eq!(
            run("a: &x abc\nb: [*x, *x, *x]\n", 100),
            Ok(1 + 2 + 4 + 4 + 2 + 1 + 3 * 4)
        );
    }

    #[test]
    fn nested_anchors_multiply_and_are_refused_before_the_alias_that_passes() {
        let input = "a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\n";
        // a: 1 + 4 * 2 = 9; b: 1 + 4 * 9 = 37; c: 1 + 4 * 37 = 149; keys 2 each; the mapping 1;
        // and a copy of each anchor.
        let whole = 1 + 3 * 2 + 2 * (9 + 37 + 149);
        assert_eq!(run(input, whole), Ok(whole));
        assert_eq!(
            run(input, whole - 1),
            Err(Refusal::Expansion { budget: whole - 1 })
        );
        // With 100 bytes, c's first alias of b would pass (99 + 37): refused there, never expanded.
        let mut budget = Budget::with_limit(100);
        let mut accepted = 0;
        for event in Parser::new_from_str(input) {
            let (event, _) = event.expect("valid YAML");
            if budget.account(&event).is_err() {
                break;
            }
            accepted += usize::from(matches!(event, Event::Alias(_)));
        }
        assert_eq!(accepted, 4);
        assert!(budget.expanded_bytes() <= 100);
    }

    #[test]
    fn the_loaders_copy_of_every_anchored_node_is_counted() {
        // 50 anchored levels around a list of 100: the tree is small, but the loader copies the list
        // once per level. The list weighs 1 + 100 * 2 = 201; level k wraps it in k sequences.
        let input = format!(
            "{}[{}]{}",
            (0..50).map(|i| format!("&a{i} [")).collect::<String>(),
            vec!["x"; 100].join(","),
            "]".repeat(50)
        );
        let tree = 201 + 50;
        let copies: u64 = (1..=50).map(|k| 201 + k).sum();
        assert_eq!(run(&input, u64::MAX), Ok(tree + copies));
        assert!(run(&input, tree + copies - 1).is_err());
    }

    #[test]
    fn an_anchor_from_another_document_is_unknown() {
        assert_eq!(
            run("a: &x [y]\n---\nb: *x\n", u64::MAX),
            Err(Refusal::UnknownAlias)
        );
    }

    #[test]
    fn nodes_per_document_are_counted_with_aliases_written_out() {
        // One anchor of 1 000 nodes (and its copy), aliased 400 times: 402 002 nodes, past the limit.
        let items = vec!["x"; 999].join(",");
        let aliases = vec!["*a"; 400].join(",");
        let input = format!("- &a [{items}]\n- [{aliases}]\n");
        assert_eq!(run(&input, u64::MAX), Err(Refusal::Nodes));
        // The count starts again with each document.
        let fewer = vec!["*a"; 300].join(",");
        let one = format!("- &a [{items}]\n- [{fewer}]\n");
        let two = format!("{one}---\n{one}");
        assert!(run(&two, u64::MAX).is_ok());
    }

    #[test]
    fn depth_aliases_and_tags_are_checked() {
        let deep = |n: usize| format!("{}x{}", "[".repeat(n), "]".repeat(n));
        assert!(run(&deep(MAX_DEPTH), u64::MAX).is_ok());
        assert_eq!(run(&deep(MAX_DEPTH + 1), u64::MAX), Err(Refusal::Depth));
        // An anchor is only usable once complete, and only in its own document.
        assert_eq!(run("a: &x [*x]\n", u64::MAX), Err(Refusal::UnknownAlias));
        assert!(run("a: !!seq [x]\nb: !!map {c: d}\n", u64::MAX).is_ok());
        for (input, tag, on) in [
            ("a: !!set {x}\n", "!!set", "mapping"),
            ("a: !!map [x]\n", "!!map", "sequence"),
            ("a: !custom [x]\n", "!custom", "sequence"),
            ("- !!omap\n  - a: b\n", "!!omap", "sequence"),
        ] {
            assert_eq!(
                run(input, u64::MAX),
                Err(Refusal::Tag {
                    tag: tag.into(),
                    on
                }),
                "{input}"
            );
        }
    }
}
