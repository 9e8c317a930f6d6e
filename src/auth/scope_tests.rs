//! Channel patterns and the per-shard scope interner.

use std::sync::Arc;

use super::*;

fn patterns(list: &[&str]) -> Patterns {
    Patterns::parse(list).unwrap()
}

#[test]
fn exact_names_and_prefix_patterns_match_as_documented() {
    let p = patterns(&["news", "scores.*", "a:b"]);
    assert!(p.matches("news"));
    assert!(p.matches("a:b"));
    assert!(p.matches("scores.eu"));
    assert!(p.matches("scores.eu.live"));
    assert!(!p.matches("scores."), "the prefix alone is not under it");
    assert!(!p.matches("scores"));
    assert!(!p.matches("scoresx"));
    assert!(!p.matches("new"));
    assert!(!p.matches("newsy"));
    let all = patterns(&["*"]);
    assert!(all.matches("anything") && all.matches("x.y"));
    assert!(Patterns::none().is_empty() && !Patterns::none().matches("news"));
}

#[test]
fn invalid_patterns_and_overlong_lists_are_refused() {
    for bad in ["", "a*", "*.x", "a.*.*", "a b", "x/y", ".*", "é"] {
        assert!(
            matches!(Patterns::parse(&[bad]), Err(PatternError::Invalid(_))),
            "{bad:?}"
        );
    }
    let long = "n".repeat(NAME_BYTES_MAX + 1);
    assert!(Patterns::parse(&[long.as_str()]).is_err());
    let many: Vec<String> = (0..=PATTERNS_MAX).map(|i| format!("c{i}")).collect();
    assert_eq!(Patterns::parse(&many), Err(PatternError::TooMany));
}

#[test]
fn order_and_duplicates_do_not_change_a_scope() {
    let a = Scope {
        subscribe: patterns(&["b", "a", "x.*"]),
        publish: Patterns::none(),
    };
    let b = Scope {
        subscribe: patterns(&["x.*", "a", "b", "a"]),
        publish: Patterns::none(),
    };
    assert_eq!(a, b);
}

#[test]
fn the_interner_shares_equal_scopes_and_forgets_unheld_ones() {
    let mut interner = ScopeInterner::default();
    let scope = |name: &str| Scope {
        subscribe: patterns(&[name]),
        publish: Patterns::none(),
    };
    let a = interner.intern(scope("a"));
    let a2 = interner.intern(scope("a"));
    assert!(Arc::ptr_eq(&a, &a2));
    let b = interner.intern(scope("b"));
    assert_eq!(interner.len(), 2);
    drop(b);
    interner.sweep();
    assert_eq!(interner.len(), 1, "b is held by no connection");
    // Many short-lived distinct scopes: the table is swept as it doubles, never unbounded.
    for i in 0..10_000 {
        drop(interner.intern(scope(&format!("c{i}"))));
    }
    assert!(interner.len() <= 2 * 64 + 1, "{}", interner.len());
    assert!(Arc::ptr_eq(&a, &interner.intern(scope("a"))));
}

#[test]
fn a_grant_is_small() {
    // Session box (16) + tab option box (16) + expiry (8) + Arc (8).
    assert!(size_of::<Grant>() <= 48, "{}", size_of::<Grant>());
}
