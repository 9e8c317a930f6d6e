//! Tidy: house rules that rustc, clippy and rustfmt do not check, enforced over every Rust
//! source file in `src/`, `loadgen/src/`, `benches/`, `tests/` and `fuzz/fuzz_targets/`.
//!
//! The rules:
//! - the `unsafe` keyword appears only under `src/ring/`;
//! - every `unsafe` block or impl has a `// SAFETY:` comment on its own line, on one of the
//!   three lines above it, or in the comment block that ends just above it;
//! - no `dbg!`, `todo!` or `unimplemented!` calls;
//! - no line longer than 100 characters (counted in chars, not bytes);
//! - no `#[ignore]` and no `#[should_panic]`: a wrong behaviour is asserted as it is, with
//!   a FIXME;
//! - module boundaries (`BOUNDARIES`): the codec (`ws/`) and the HTTP parsers (`http/`) name
//!   nothing of the crate outside themselves, and the ring boundary (`ring/`) knows no
//!   protocol: it names only itself and the log; channels and sessions (`channels.rs`)
//!   name no connection internals.
//!
//! Keywords, macros and attributes are matched in code only: comments and the contents of
//! string and char literals are blanked out first, so prose and test data never trip a
//! rule (this file names every pattern it looks for). Line lengths and `SAFETY:` comments
//! are read from the raw text.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The longest line allowed, in characters.
const LINE_CHARS_MAX: usize = 100;

/// How many lines above an `unsafe` block or impl may hold its `SAFETY:` comment.
const SAFETY_LINES_ABOVE_MAX: usize = 3;

/// The folders scanned, relative to the crate root; a missing one is skipped.
const ROOTS: &[&str] = &[
    "src",
    "loadgen/src",
    "benches",
    "tests",
    "fuzz/fuzz_targets",
];

/// The only folder where `unsafe` may appear.
const UNSAFE_ALLOWED_UNDER: &str = "src/ring/";

/// The keyword, spelled so that this file's own text holds no bare match of it.
const UNSAFE: &str = concat!("uns", "afe");
/// The comment tag that justifies an `unsafe` block or impl.
const SAFETY_TAG: &str = concat!("SAF", "ETY:");
/// Macros that mark unfinished or debugging code.
const BANNED_MACROS: &[&str] = &[
    concat!("db", "g!("),
    concat!("to", "do!("),
    concat!("unimpl", "emented!("),
];
/// Folders (or files) and the only top-level modules their code may name as `crate::X`.
const BOUNDARIES: &[(&str, &[&str])] = &[
    ("src/ws/", &["ws"]),
    ("src/http/", &["http"]),
    ("src/ring/", &["ring", "elog", "log"]),
    // The reactor skeleton knows rings and connections' I/O flags, no protocol.
    ("src/reactor/", &["reactor", "ring", "elog", "log"]),
    // Channels and sessions speak in slab keys and owners, never in connection internals.
    ("src/channels.rs", &["ring"]),
];

/// Test attributes that hide a wrong behaviour instead of asserting it.
const BANNED_ATTRIBUTES: &[&str] = &[concat!("#[ig", "nore"), concat!("#[should", "_panic")];

#[test]
fn tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ROOTS {
        collect_rs_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "tidy found no Rust files under {}",
        root.display()
    );

    let mut violations = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
        let relative = path.strip_prefix(root).unwrap_or(path);
        // Paths use `/` on every platform, so that the `src/ring/` rule reads the same.
        let relative = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        check_file(&relative, &text, &mut violations);
    }

    for violation in &violations {
        println!("{violation}");
    }
    println!(
        "tidy: {} files scanned, {} violations",
        files.len(),
        violations.len()
    );
    let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "tidy: {} violation(s) in {} files scanned:\n{}",
        violations.len(),
        files.len(),
        list.join("\n")
    );
}

/// One broken rule at one place.
struct Violation {
    path: String,
    line: usize,
    rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.rule)
    }
}

/// Appends every `.rs` file under `dir` (recursively) to `files`, skipping build output.
fn collect_rs_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            collect_rs_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// Checks one file's text against every rule.
fn check_file(path: &str, text: &str, violations: &mut Vec<Violation>) {
    let raw: Vec<&str> = text.lines().collect();
    let code_text = blank_comments_and_literals(text);
    let code: Vec<&str> = code_text.lines().collect();
    debug_assert_eq!(raw.len(), code.len());
    let mut report = |line: usize, rule: String| {
        violations.push(Violation {
            path: path.to_owned(),
            line: line + 1,
            rule,
        });
    };

    for (index, line) in raw.iter().enumerate() {
        let chars = line.chars().count();
        if chars > LINE_CHARS_MAX {
            report(
                index,
                format!("line of {chars} characters (max {LINE_CHARS_MAX})"),
            );
        }
    }

    for (index, line) in code.iter().enumerate() {
        for start in token_starts(line, UNSAFE) {
            if !path.starts_with(UNSAFE_ALLOWED_UNDER) {
                report(index, format!("`{UNSAFE}` outside {UNSAFE_ALLOWED_UNDER}"));
            }
            let rest = code_after(&code, index, start + UNSAFE.len());
            let needs_comment = rest.starts_with('{') || starts_with_token(&rest, "impl");
            if needs_comment && !has_safety_comment(&raw, index) {
                report(
                    index,
                    format!("`{UNSAFE}` block or impl without a `// {SAFETY_TAG}` comment"),
                );
            }
        }
        if let Some((under, allowed)) = BOUNDARIES.iter().find(|(p, _)| path.starts_with(p)) {
            for start in token_starts(line, "crate::") {
                let module: String = line[start + "crate::".len()..]
                    .chars()
                    .take_while(|&c| is_ident_char(c))
                    .collect();
                if !allowed.contains(&module.as_str()) {
                    report(
                        index,
                        format!("`crate::{module}` named under {under} (allowed: {allowed:?})"),
                    );
                }
            }
        }
        for pattern in BANNED_MACROS {
            if !token_starts(line, pattern).is_empty() {
                report(index, format!("`{pattern}` left in"));
            }
        }
        for pattern in BANNED_ATTRIBUTES {
            for start in find_all(line, pattern) {
                let next = line[start + pattern.len()..].chars().next();
                if matches!(next, Some(']' | '(' | ' ' | '=')) {
                    report(
                        index,
                        format!("`{pattern}]` in a test; assert with a FIXME"),
                    );
                }
            }
        }
    }
}

/// Whether a `// SAFETY:` comment sits on line `index`, on one of the lines just above it,
/// or anywhere in the run of comment lines that ends just above it.
fn has_safety_comment(raw: &[&str], index: usize) -> bool {
    let is_safety = |line: &str| {
        line.find("//")
            .is_some_and(|comment| line[comment..].contains(SAFETY_TAG))
    };
    let first_in_reach = index.saturating_sub(SAFETY_LINES_ABOVE_MAX);
    if raw[first_in_reach..=index]
        .iter()
        .any(|line| is_safety(line))
    {
        return true;
    }
    // A longer justification: the comment block that ends on the line above.
    raw[..index]
        .iter()
        .rev()
        .take_while(|line| line.trim_start().starts_with("//"))
        .any(|line| is_safety(line))
}

/// The code that follows column `column` of line `index`, joined with the next line when
/// the rest of this one is blank (`unsafe` and its `{` may sit on separate lines).
fn code_after(code: &[&str], index: usize, column: usize) -> String {
    let rest = code[index][column..].trim_start();
    if !rest.is_empty() {
        return rest.to_owned();
    }
    code.get(index + 1)
        .map_or_else(String::new, |next| next.trim_start().to_owned())
}

/// Every byte offset in `line` where `needle` occurs.
fn find_all(line: &str, needle: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(found) = line[from..].find(needle) {
        starts.push(from + found);
        from += found + needle.len();
    }
    starts
}

/// The offsets where `needle` occurs as a whole token: no identifier character touches its
/// start, nor its end when it ends in one.
fn token_starts(line: &str, needle: &str) -> Vec<usize> {
    find_all(line, needle)
        .into_iter()
        .filter(|&start| {
            let before = line[..start].chars().next_back();
            let after = line[start + needle.len()..].chars().next();
            let ends_in_ident = needle.chars().next_back().is_some_and(is_ident_char);
            let joined_before = before.is_some_and(is_ident_char);
            let joined_after = ends_in_ident && after.is_some_and(is_ident_char);
            !joined_before && !joined_after
        })
        .collect()
}

/// Whether `text` starts with the whole token `token`.
fn starts_with_token(text: &str, token: &str) -> bool {
    text.strip_prefix(token)
        .is_some_and(|rest| !rest.chars().next().is_some_and(is_ident_char))
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The lexer state of `blank_comments_and_literals`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lex {
    Code,
    LineComment,
    /// Block comments nest in Rust; this is the depth.
    BlockComment(usize),
    /// A `"..."` literal, string or byte string.
    Str,
    /// A raw string literal closed by `"` and this many `#`.
    RawStr(usize),
    /// A char or byte literal after its opening quote.
    Char,
}

/// `text` with every comment and the contents of every string and char literal replaced by
/// spaces. Line breaks are kept, so line numbers and columns still match the source.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut state = Lex::Code;
    let mut i = 0;
    // Blanks a char but keeps line breaks.
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match state {
            Lex::Code => {
                let prev_ident = i > 0 && is_ident_char(chars[i - 1]);
                if c == '/' && next == Some('/') {
                    state = Lex::LineComment;
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if c == '/' && next == Some('*') {
                    state = Lex::BlockComment(1);
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if c == '"' {
                    state = Lex::Str;
                } else if let Some(hashes) = raw_string_start(&chars, i, prev_ident) {
                    // Keep `r###"` as is; the contents are blanked.
                    out.extend(&chars[i..i + hashes + 2]);
                    i += hashes + 2;
                    state = Lex::RawStr(hashes);
                    continue;
                } else if c == '\'' && is_char_literal(&chars, i) {
                    state = Lex::Char;
                }
                out.push(c);
            }
            Lex::LineComment => {
                if c == '\n' {
                    state = Lex::Code;
                }
                out.push(blank(c));
            }
            Lex::BlockComment(depth) => {
                if c == '*' && next == Some('/') {
                    state = if depth == 1 {
                        Lex::Code
                    } else {
                        Lex::BlockComment(depth - 1)
                    };
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                if c == '/' && next == Some('*') {
                    state = Lex::BlockComment(depth + 1);
                    out.push_str("  ");
                    i += 2;
                    continue;
                }
                out.push(blank(c));
            }
            Lex::Str | Lex::Char => {
                let close = if state == Lex::Str { '"' } else { '\'' };
                if c == '\\' {
                    out.push(' ');
                    if let Some(escaped) = next {
                        out.push(blank(escaped));
                    }
                    i += 2;
                    continue;
                }
                if c == close {
                    state = Lex::Code;
                    out.push(c);
                } else {
                    out.push(blank(c));
                }
            }
            Lex::RawStr(hashes) => {
                let closes = c == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#'));
                if closes {
                    out.extend(&chars[i..i + hashes + 1]);
                    i += hashes + 1;
                    state = Lex::Code;
                    continue;
                }
                out.push(blank(c));
            }
        }
        i += 1;
    }
    out
}

/// If a raw string (`r"`, `r#"`, `br##"`, ...) starts at `chars[i]`, how many `#` it uses.
/// `prev_ident` says whether an identifier character precedes `i`; the `b` of `br"` is
/// allowed as that character.
fn raw_string_start(chars: &[char], i: usize, prev_ident: bool) -> Option<usize> {
    if chars[i] != 'r' {
        return None;
    }
    if prev_ident {
        let byte_prefix = i >= 1 && chars[i - 1] == 'b' && (i < 2 || !is_ident_char(chars[i - 2]));
        if !byte_prefix {
            return None;
        }
    }
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// Whether the `'` at `chars[i]` opens a char literal rather than a lifetime or label:
/// `'\..'` or a single char followed by `'`.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

#[test]
fn blanking_keeps_code_and_drops_prose() {
    let macro_call = BANNED_MACROS[0];
    let source = format!(
        "let a = \"{macro_call}\"; // {macro_call}\nlet b = r#\"{UNSAFE} {{\"#; /* {UNSAFE} {{ */\n\
         let c = '\"'; let d: &'static str = \"\\\"{UNSAFE}\"; {macro_call}x);\n"
    );
    let blanked = blank_comments_and_literals(&source);
    assert_eq!(blanked.lines().count(), source.lines().count());
    let lines: Vec<&str> = blanked.lines().collect();
    assert!(!lines[0].contains(macro_call), "{:?}", lines[0]);
    assert!(!lines[1].contains(UNSAFE), "{:?}", lines[1]);
    assert!(lines[2].contains(macro_call), "{:?}", lines[2]);
    assert!(!lines[2].contains(UNSAFE), "{:?}", lines[2]);
}

#[test]
fn rules_fire_on_what_they_name() {
    let rules = |path: &str, text: &str| {
        let mut found = Vec::new();
        check_file(path, text, &mut found);
        found
            .into_iter()
            .map(|v| (v.line, v.rule))
            .collect::<Vec<_>>()
    };
    let block = format!("let x = {UNSAFE} {{ f() }};\n");
    let justified = format!("// {SAFETY_TAG} f has no preconditions.\n{block}");
    assert!(rules("src/ring/mod.rs", &justified).is_empty());
    assert_eq!(rules("src/ring/mod.rs", &block).len(), 1);
    assert_eq!(rules("src/ws/frame.rs", &justified).len(), 1);
    assert_eq!(rules("src/ws/frame.rs", &block).len(), 2);

    let long_comment = format!("// {SAFETY_TAG} a.\n// b.\n// c.\n// d.\n// e.\n{block}");
    assert!(rules("src/ring/mod.rs", &long_comment).is_empty());
    let too_far = format!("// {SAFETY_TAG} a.\nf();\ng();\nh();\n{block}");
    assert_eq!(rules("src/ring/mod.rs", &too_far).len(), 1);
    let impl_line = format!("{UNSAFE} impl Send for X {{}}\n");
    assert_eq!(rules("src/ring/mod.rs", &impl_line).len(), 1);
    let function = format!("pub {UNSAFE} fn f() {{}}\n");
    assert!(rules("src/ring/mod.rs", &function).is_empty());
    assert_eq!(rules("tests/x.rs", &function).len(), 1);
    assert!(rules("src/x.rs", &format!("#![forbid({UNSAFE}_code)]\n")).is_empty());

    let reach = "use crate::conn::Conn;\n";
    assert_eq!(rules("src/ring/mod.rs", reach).len(), 1);
    assert_eq!(rules("src/ws/frame.rs", "use crate::http::x;\n").len(), 1);
    assert!(rules("src/ws/frame.rs", "use crate::ws::frame;\n").is_empty());
    assert!(rules("src/shard.rs", reach).is_empty());
    assert!(rules("src/ring/mod.rs", "crate::elog!(\"x\");\n").is_empty());
    assert_eq!(rules("src/channels.rs", reach).len(), 1);

    let attribute = format!("{}]\nfn t() {{}}\n", BANNED_ATTRIBUTES[1]);
    assert_eq!(rules("tests/x.rs", &attribute)[0].0, 1);
    let wide = format!("// {}\n", "é".repeat(LINE_CHARS_MAX - 3));
    assert!(rules("src/x.rs", &wide).is_empty(), "chars, not bytes");
    let too_wide = format!("// {}\n", "é".repeat(LINE_CHARS_MAX - 2));
    assert_eq!(rules("src/x.rs", &too_wide).len(), 1);
}
