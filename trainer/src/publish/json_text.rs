//! Editing a JSON object's text without parsing it into a tree: its top-level
//! members are found by position, so everything not edited (key order, numbers,
//! layout) stays byte for byte.

use anyhow::Context;
use serde::Serialize;

/// The top-level members of a JSON object text: `(key, start, end)`, from the key's
/// opening quote to just after the value. `None` if the text is not an object.
pub(super) fn members(text: &str) -> Option<Vec<(String, usize, usize)>> {
    let b = text.as_bytes();
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Just past the string literal starting at `i`.
    let string_end = |mut i: usize| {
        i += 1;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        (i < b.len()).then_some(i + 1)
    };
    let mut out = Vec::new();
    let mut i = 0;
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        ws(&mut i);
        match b.get(i)? {
            b'}' => return Some(out),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let start = i;
        let key_end = string_end(i)?;
        let key: String = serde_json::from_str(&text[start..key_end]).ok()?;
        i = key_end;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        let mut depth = 0usize;
        loop {
            match b.get(i)? {
                b'"' => {
                    i = string_end(i)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        let mut end = i;
        while end > start && b[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        out.push((key, start, end));
    }
}

/// The raw text of the top-level member `key`'s value.
pub(super) fn member_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let (_, start, end) = members(text)?.into_iter().find(|(k, ..)| k == key)?;
    let colon = start + text[start..end].find(':')?;
    Some(text[colon + 1..end].trim())
}

/// The object text with its top-level member `key` set to `value` (written last,
/// pretty, indented like `serde_json::to_string_pretty`'s members).
pub(super) fn set_member(text: &str, key: &str, value: &impl Serialize) -> anyhow::Result<String> {
    let ms = members(text).context("run.json is not a JSON object")?;
    let mut text = text.to_string();
    if let Some(pos) = ms.iter().position(|(k, ..)| k == key) {
        // Cut from the end of the previous member (or the start of the next one).
        let (from, to) = match (pos.checked_sub(1), ms.get(pos + 1)) {
            (Some(prev), _) => (ms[prev].2, ms[pos].2),
            (None, Some(next)) => (ms[pos].1, next.1),
            (None, None) => (ms[pos].1, ms[pos].2),
        };
        text.replace_range(from..to, "");
    }
    let close = text.rfind('}').context("run.json is not a JSON object")?;
    let body = text[..close].trim_end().to_string();
    let pretty = serde_json::to_string_pretty(value)?.replace('\n', "\n  ");
    let sep = if body.ends_with('{') { "" } else { "," };
    let key = serde_json::Value::String(key.to_string());
    Ok(format!("{body}{sep}\n  {key}: {pretty}\n}}\n"))
}

/// A JSON value's text, taken out of a pretty document where it was indented by two.
pub(super) fn dedent(value: &str) -> String {
    let mut s = value.replace("\n  ", "\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_replaced_and_appended() {
        let text =
            "{\n  \"a\": {\"x\": [1, \"}\"]},\n  \"published\": {\"old\": 1},\n  \"z\": 2.50\n}\n";
        let ms = members(text).unwrap();
        assert_eq!(
            ms.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
            ["a", "published", "z"]
        );
        assert_eq!(member_value(text, "a"), Some("{\"x\": [1, \"}\"]}"));
        let out = set_member(text, "published", &serde_json::json!({"new": 2})).unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {\"x\": [1, \"}\"]},\n  \"z\": 2.50,\n  \"published\": {\n    \"new\": 2\n  }\n}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["published"]["new"], 2);
        assert_eq!(
            set_member("{}", "k", &serde_json::json!(1)).unwrap(),
            "{\n  \"k\": 1\n}\n"
        );
        assert_eq!(dedent("{\n    \"a\": 1\n  }"), "{\n  \"a\": 1\n}\n");
    }
}
