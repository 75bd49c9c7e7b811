//! Where each key and value of a YAML document is, by the path `Issues` use
//! (`subscriptions[2].retries`), and which keys a mapping repeats. serde_yaml reports
//! positions for syntax errors only, so the text is read a second time as events with marks.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use super::{Issue, Target, index, join};

/// A place in the text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line.
    pub line: usize,
    /// Column, in characters.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// The positions of one document's keys and values.
#[derive(Debug, Default)]
pub struct Positions {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
    duplicates: Vec<Issue>,
}

impl Positions {
    /// Reads the first document of `text`; an error when it is not YAML (serde_yaml, which
    /// reads the tree, reports that one).
    pub fn read(text: &str) -> Result<Positions, ScanError> {
        let mut walk = Walk {
            text,
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            ..Walk::default()
        };
        Parser::new_from_str(text).load(&mut walk, false)?;
        Ok(walk.positions)
    }

    /// Every key a mapping repeats, at the repetition's own position.
    pub fn duplicates(&self) -> &[Issue] {
        &self.duplicates
    }

    /// Where `issue` points: its key or value, else the nearest enclosing value present
    /// (a missing key is reported at its mapping).
    pub fn locate(&self, issue: &Issue) -> Option<Position> {
        if issue.target == Target::Key
            && let Some(p) = self.keys.get(&issue.path)
        {
            return Some(*p);
        }
        let mut path = issue.path.as_str();
        loop {
            if let Some(p) = self.values.get(path) {
                return Some(*p);
            }
            path = parent(path)?;
        }
    }

    /// `issue` with its position filled in.
    pub fn place(&self, mut issue: Issue) -> Issue {
        issue.position = self.locate(&issue);
        issue
    }
}

/// The path one step up: `a.b[2]` -> `a.b` -> `a` -> `` -> none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    })
}

/// An open collection while the events are walked.
enum Frame {
    Mapping {
        path: String,
        /// The key just read, whose value comes next; `None` when a key is expected.
        key: Option<String>,
        /// A complex key (a mapping or list as key) was read: its value has no path.
        skip_value: bool,
    },
    Sequence {
        path: String,
        next: usize,
    },
    /// Inside a complex key or its value: nothing recorded until the depth closes.
    Skipped(usize),
}

#[derive(Default)]
struct Walk<'t> {
    text: &'t str,
    /// Byte offset of each line's start: marks count characters, the text is bytes.
    line_starts: Vec<usize>,
    stack: Vec<Frame>,
    positions: Positions,
    /// Block collections opened since the last scalar or bracket: yaml-rust2 marks a block
    /// mapping's start after its first key (at the `:`), so they take the next sure mark.
    pending: Vec<String>,
    /// Keys already read per open mapping, for duplicates (parallel to `Frame::Mapping`s).
    seen: Vec<HashMap<String, Position>>,
    done: bool,
}

/// What the next node is to its parent.
enum Role {
    Key,
    Value(String),
    Skip,
}

impl Walk<'_> {
    /// The character a mark points at.
    fn char_at(&self, mark: Marker) -> Option<char> {
        let start = *self.line_starts.get(mark.line().checked_sub(1)?)?;
        self.text[start..]
            .chars()
            .take_while(|c| *c != '\n')
            .nth(mark.col())
    }

    /// What the next node is.
    fn role(&mut self) -> Role {
        match self.stack.last_mut() {
            None => Role::Value(String::new()),
            Some(Frame::Skipped(_)) => Role::Skip,
            Some(Frame::Sequence { path, next }) => {
                *next += 1;
                Role::Value(index(path, *next - 1))
            }
            Some(Frame::Mapping {
                path,
                key,
                skip_value,
            }) => match key.take() {
                Some(k) => Role::Value(join(path, &k)),
                None if *skip_value => {
                    *skip_value = false;
                    Role::Skip
                }
                None => Role::Key,
            },
        }
    }

    fn key(&mut self, text: String, at: Position) {
        let Some(Frame::Mapping { path, key, .. }) = self.stack.last_mut() else {
            return;
        };
        let full = join(path, &text);
        let seen = self.seen.last_mut().expect("one per mapping");
        if let Some(first) = seen.get(&text) {
            self.positions.duplicates.push(Issue {
                path: full.clone(),
                reason: format!("duplicate key (first at line {})", first.line),
                target: Target::Key,
                position: Some(at),
            });
        } else {
            seen.insert(text.clone(), at);
            self.positions.keys.entry(full).or_insert(at);
        }
        *key = Some(text);
    }

    fn open(&mut self, frame: Frame) {
        if matches!(frame, Frame::Mapping { .. }) {
            self.seen.push(HashMap::new());
        }
        self.stack.push(frame);
    }

    fn close(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Skipped(depth)) if *depth > 1 => *depth -= 1,
            Some(Frame::Mapping { .. }) => {
                self.seen.pop();
                self.stack.pop();
            }
            _ => {
                self.stack.pop();
            }
        }
    }

    /// A complex key: its value is skipped too.
    fn complex_key(&mut self) {
        if let Some(Frame::Mapping { skip_value, .. }) = self.stack.last_mut() {
            *skip_value = true;
        }
        self.stack.push(Frame::Skipped(1));
    }
}

impl MarkedEventReceiver for Walk<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let mut at = Position::from(mark);
        let collection = match &ev {
            Event::MappingStart(..) => Some(true),
            Event::SequenceStart(..) => Some(false),
            Event::Scalar(..) | Event::Alias(_) => None,
            Event::MappingEnd | Event::SequenceEnd => {
                self.close();
                return;
            }
            Event::DocumentEnd => {
                self.done = true;
                return;
            }
            _ => return,
        };
        if let Some(Frame::Skipped(depth)) = self.stack.last_mut() {
            if collection.is_some() {
                *depth += 1;
            }
            return;
        }
        // Scalars and brackets are marked where they are; block collections are not.
        let block = collection.is_some() && !matches!(self.char_at(mark), Some('{' | '['));
        // A key with nothing after it (`url:`) is marked at the next token, maybe lines on:
        // its own key's place is where the missing value is.
        if let (
            Event::Scalar(text, TScalarStyle::Plain, ..),
            Some(Frame::Mapping {
                path,
                key: Some(key),
                ..
            }),
        ) = (&ev, self.stack.last())
            && text.is_empty()
            && let Some(key_at) = self.positions.keys.get(&join(path, key))
        {
            at = *key_at;
        }
        if !block {
            for path in self.pending.drain(..) {
                self.positions.values.insert(path, at);
            }
        }
        match (self.role(), collection) {
            (Role::Skip, Some(_)) => self.stack.push(Frame::Skipped(1)),
            (Role::Skip, None) => {}
            (Role::Key, Some(_)) => self.complex_key(),
            (Role::Key, None) => match ev {
                Event::Scalar(text, ..) => self.key(text, at),
                // An alias as key: its text is unknown here.
                _ => {
                    if let Some(Frame::Mapping { skip_value, .. }) = self.stack.last_mut() {
                        *skip_value = true;
                    }
                }
            },
            (Role::Value(path), kind) => {
                self.positions.values.entry(path.clone()).or_insert(at);
                if block {
                    self.pending.push(path.clone());
                }
                match kind {
                    Some(true) => self.open(Frame::Mapping {
                        path,
                        key: None,
                        skip_value: false,
                    }),
                    Some(false) => self.open(Frame::Sequence { path, next: 0 }),
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: &Positions, path: &str, target: Target) -> Option<(usize, usize)> {
        let issue = Issue {
            path: path.to_string(),
            reason: String::new(),
            target,
            position: None,
        };
        p.locate(&issue).map(|p| (p.line, p.column))
    }

    const DOC: &str = "\
listen:
  app: 127.0.0.1:1
subscriptions:
  - name: a
    retries: 42
    headers: {X-A: '1', x: [1, 2]}
  - {name: b, url: 'http://x/'}
";

    #[test]
    fn values_and_keys_have_their_own_positions() {
        let p = Positions::read(DOC).unwrap();
        assert_eq!(at(&p, "listen.app", Target::Value), Some((2, 8)));
        assert_eq!(at(&p, "listen.app", Target::Key), Some((2, 3)));
        assert_eq!(
            at(&p, "subscriptions[0].retries", Target::Value),
            Some((5, 14))
        );
        assert_eq!(
            at(&p, "subscriptions[0].headers.X-A", Target::Value),
            Some((6, 20))
        );
        assert_eq!(
            at(&p, "subscriptions[0].headers.x[1]", Target::Value),
            Some((6, 32))
        );
        assert_eq!(at(&p, "subscriptions[1].url", Target::Value), Some((7, 20)));
        assert_eq!(at(&p, "subscriptions[1].url", Target::Key), Some((7, 15)));
        assert!(p.duplicates().is_empty());
        // Block collections start at their first entry.
        assert_eq!(at(&p, "listen", Target::Value), Some((2, 3)));
        assert_eq!(at(&p, "subscriptions", Target::Value), Some((4, 5)));
        assert_eq!(at(&p, "subscriptions[0]", Target::Value), Some((4, 5)));
    }

    #[test]
    fn a_key_without_a_value_is_placed_at_its_key() {
        let p = Positions::read("a:\n  url:\n  events: [x]\nb: 1\nlast:\n").unwrap();
        assert_eq!(at(&p, "a.url", Target::Value), Some((2, 3)));
        assert_eq!(at(&p, "a.events", Target::Value), Some((3, 11)));
        assert_eq!(at(&p, "last", Target::Value), Some((5, 1)));
    }

    #[test]
    fn characters_beyond_ascii_do_not_shift_collections() {
        // Marks count characters; the byte offset of `[` is past the multi-byte ones.
        let p = Positions::read("# café ‹›\nfrom: \"Zoë\"\nevents: []\nheaders: {}\nnext: 1\n")
            .unwrap();
        assert_eq!(at(&p, "events", Target::Value), Some((3, 9)));
        assert_eq!(at(&p, "headers", Target::Value), Some((4, 10)));
        assert_eq!(at(&p, "next", Target::Value), Some((5, 7)));
    }

    #[test]
    fn a_missing_path_points_at_what_encloses_it() {
        let p = Positions::read(DOC).unwrap();
        // The flow mapping starts at its brace.
        assert_eq!(
            at(&p, "subscriptions[1].events", Target::Value),
            Some((7, 5))
        );
        assert_eq!(at(&p, "subscriptions[1].events", Target::Key), Some((7, 5)));
        assert_eq!(at(&p, "storage.path", Target::Value), Some((1, 1)));
        assert_eq!(at(&p, "", Target::Value), Some((1, 1)));
        assert_eq!(at(&Positions::default(), "x", Target::Value), None);
    }

    #[test]
    fn repeated_keys_are_reported_once_each_at_their_own_line() {
        let p = Positions::read(
            "listen:\n  app: a\n  api: b\n  app: c\nlog: {level: x, level: y}\nlisten: 2\n",
        )
        .unwrap();
        let found: Vec<String> = p
            .duplicates()
            .iter()
            .map(|i| format!("{}: {}", i.position.unwrap(), i))
            .collect();
        assert_eq!(
            found,
            [
                "4:3: listen.app: duplicate key (first at line 2)",
                "5:17: log.level: duplicate key (first at line 5)",
                "6:1: listen: duplicate key (first at line 1)",
            ]
        );
    }

    #[test]
    fn complex_keys_and_aliases_are_skipped_without_confusing_the_rest() {
        let p =
            Positions::read("base: &b {retries: 1}\n? [a, b]\n: {x: 1}\nsub: *b\nafter: {k: v}\n")
                .unwrap();
        assert_eq!(at(&p, "after.k", Target::Value), Some((5, 12)));
        assert_eq!(at(&p, "sub.retries", Target::Value), Some((4, 6)));
        assert_eq!(at(&p, "base.retries", Target::Value), Some((1, 20)));
    }

    #[test]
    fn text_that_is_not_yaml_is_an_error() {
        assert!(Positions::read("a: [1,\n").is_err());
        assert!(Positions::read("").unwrap().values.is_empty());
    }

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
