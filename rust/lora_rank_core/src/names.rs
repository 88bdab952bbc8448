//! Dotted parameter names (`model.layers.12.mlp.up_proj.weight`): their layer and expert
//! indices, the pattern left when those are abstracted, and natural order.
//!
//! An *index* is a dot-separated part made only of ASCII digits, other than the first part
//! (`.12` in `layers.12.mlp`, `.3` at the end of `experts.3`). The inventory renames and
//! resolves each pattern once, then fills in the indices of every name of the pattern.

use std::cmp::Ordering;
use std::collections::HashMap;

fn is_index(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

/// `name` with every index replaced by `.{placeholder}`, and its indices (each with its dot,
/// `".12"`), in order.
///
/// ```
/// let (pattern, indices) = lora_rank_core::names::abstract_name("h.3.mlp.experts.0.w1", "#");
/// assert_eq!(pattern, "h.#.mlp.experts.#.w1");
/// assert_eq!(indices, vec![".3", ".0"]);
/// ```
pub fn abstract_name<'a>(name: &'a str, placeholder: &str) -> (String, Vec<&'a str>) {
    let mut pattern = String::with_capacity(name.len());
    let mut indices = Vec::new();
    let mut start = 0;
    for (i, part) in name.split('.').enumerate() {
        let end = start + part.len();
        if i == 0 {
            pattern.push_str(part);
        } else if is_index(part) {
            pattern.push('.');
            pattern.push_str(placeholder);
            indices.push(&name[start - 1..end]);
        } else {
            pattern.push('.');
            pattern.push_str(part);
        }
        start = end + 1;
    }
    (pattern, indices)
}

/// The patterns of many names: the distinct patterns in the order first seen, and for each
/// name its pattern's number and its indices.
pub struct NamePatterns<'a> {
    pub patterns: Vec<String>,
    pub pattern_of: Vec<usize>,
    pub indices: Vec<Vec<&'a str>>,
}

/// [`abstract_name`] of every name, patterns numbered once.
///
/// ```
/// let p = lora_rank_core::names::name_patterns(&["a.0.w", "b", "a.1.w"], "#");
/// assert_eq!(p.patterns, vec!["a.#.w", "b"]);
/// assert_eq!(p.pattern_of, vec![0, 1, 0]);
/// assert_eq!(p.indices[2], vec![".1"]);
/// ```
pub fn name_patterns<'a, S: AsRef<str>>(names: &'a [S], placeholder: &str) -> NamePatterns<'a> {
    let mut numbers: HashMap<String, usize> = HashMap::new();
    let mut out = NamePatterns {
        patterns: Vec::new(),
        pattern_of: Vec::with_capacity(names.len()),
        indices: Vec::with_capacity(names.len()),
    };
    for name in names {
        let (pattern, indices) = abstract_name(name.as_ref(), placeholder);
        let next = out.patterns.len();
        let number = *numbers.entry(pattern).or_insert_with_key(|p| {
            out.patterns.push(p.clone());
            next
        });
        out.pattern_of.push(number);
        out.indices.push(indices);
    }
    out
}

/// One part of a name as natural order compares it: numbers (all ASCII digits, by value)
/// before words (by their bytes).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Part<'a> {
    /// The digits without leading zeros (compared by length, then digit by digit), and the
    /// original (ties keep their order: the sort is stable).
    Number(usize, &'a [u8]),
    Word(&'a [u8]),
}

fn part(p: &str) -> Part<'_> {
    if is_index(p) {
        let digits = p.trim_start_matches('0').as_bytes();
        Part::Number(digits.len(), digits)
    } else {
        Part::Word(p.as_bytes())
    }
}

/// The natural order of two names: part by part (split at dots), numbers by value before
/// words, a name before its own extensions (`h.1` before `h.1.x`).
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    a.split('.').map(part).cmp(b.split('.').map(part))
}

/// The permutation that sorts `names` in natural order ([`natural_cmp`]; stable).
///
/// ```
/// let order = lora_rank_core::names::natural_order(&["h.10.x", "h.2.x", "h.norm"]);
/// assert_eq!(order, vec![1, 0, 2]);
/// ```
pub fn natural_order<S: AsRef<str>>(names: &[S]) -> Vec<usize> {
    let keys: Vec<Vec<Part<'_>>> = names
        .iter()
        .map(|n| n.as_ref().split('.').map(part).collect())
        .collect();
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&i, &j| keys[i].cmp(&keys[j]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_whole_digit_parts_after_the_first() {
        let (p, i) = abstract_name("0.layers.12.fc1.3a.7", "#");
        assert_eq!(p, "0.layers.#.fc1.3a.#");
        assert_eq!(i, vec![".12", ".7"]);
        let (p, i) = abstract_name("a..b.", "#");
        assert_eq!((p.as_str(), i.len()), ("a..b.", 0));
        let (p, i) = abstract_name("a.١٢.b", "#"); // non-ASCII digits are words
        assert_eq!((p.as_str(), i.len()), ("a.١٢.b", 0));
    }

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let names = [
            "h.10",
            "h.9",
            "h.009",
            "h.x",
            "h",
            "h.9.a",
            "g.99999999999999999999999",
        ];
        let sorted: Vec<&str> = natural_order(&names)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(
            sorted,
            [
                "g.99999999999999999999999",
                "h",
                "h.9",
                "h.009",
                "h.9.a",
                "h.10",
                "h.x"
            ]
        );
    }
}
