//! `$name` expansion of main.cf values, as Postfix's `util/mac_parse.c` and
//! `util/mac_expand.c` do it: `$name`, `${name}`, `$(name)`, `$$`,
//! `${name?text}`, `${name:text}`, `${name?{t1}:{t2}}` and the relational form
//! `${{a} op {b} ? {t1} : {t2}}` with `==`, `!=`, `<`, `<=`, `>`, `>=` and the
//! compatibility-level variants `<level`, `<=level`, ... (`global/compat_level.c`).

use super::ConfigError;
use std::cell::Cell;

/// Nesting limit for recursive expansion (mac_expand's "unreasonable macro call nesting").
const MAX_DEPTH: usize = 100;

/// Work allowed for one expansion: references followed plus bytes copied.
/// Nesting is limited, but values that each use the next one twice
/// (`a = $b$b`, `b = $c$c`, ...) double the work at every level; past this
/// budget expansion fails instead of exhausting memory or time. Real main.cf
/// values use a tiny fraction of it.
const MAX_WORK: usize = 1 << 22;

/// Expands `value` recursively; `lookup` returns the raw value of a name or
/// `None` when it is undefined (undefined names expand to nothing).
///
/// Errors: unbalanced braces, an empty name, bad syntax, or nesting deeper
/// than 100 levels give [`ConfigError::Macro`].
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    expand_into(value, lookup, 0, &Cell::new(0), &mut out)?;
    Ok(out)
}

fn charge(work: &Cell<usize>, n: usize, value: &str) -> Result<(), ConfigError> {
    work.set(work.get().saturating_add(n));
    if work.get() > MAX_WORK {
        return Err(err(value, "unreasonable macro expansion size"));
    }
    Ok(())
}

fn err(value: &str, what: &str) -> ConfigError {
    ConfigError::Macro(format!("{what}: \"{value}\""))
}

fn expand_into(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    work: &Cell<usize>,
    out: &mut String,
) -> Result<(), ConfigError> {
    if depth > MAX_DEPTH {
        return Err(err(value, "unreasonable macro call nesting"));
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'$' {
            // Copy a run of literal text at once (keeps multi-byte characters whole).
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'$')
                .map_or(bytes.len(), |p| i + p);
            charge(work, end - i, value)?;
            out.push_str(&value[i..end]);
            i = end;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            out.push('$');
            i += 2;
            continue;
        }
        i += 1;
        let expr: &str;
        match bytes.get(i) {
            Some(&open @ (b'{' | b'(')) => {
                let close = if open == b'{' { b'}' } else { b')' };
                let mut level = 1;
                let start = i + 1;
                let mut j = start;
                loop {
                    if j >= bytes.len() {
                        return Err(err(value, "truncated macro reference"));
                    }
                    if bytes[j] == open {
                        level += 1;
                    } else if bytes[j] == close {
                        level -= 1;
                        if level == 0 {
                            break;
                        }
                    }
                    j += 1;
                }
                expr = &value[start..j];
                i = j + 1;
            }
            _ => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                expr = &value[start..i];
            }
        }
        if expr.is_empty() {
            return Err(err(value, "empty macro name"));
        }
        charge(work, 1, value)?;
        expand_expr(expr, lookup, depth + 1, work, out)?;
    }
    Ok(())
}

/// Returns the payload of a `{...}` group starting at `s` (after optional
/// whitespace) and the rest of the text after it, or `None` if `s` does not
/// start with `{`.
fn curly_payload(s: &str) -> Result<Option<(&str, &str)>, ConfigError> {
    let t = s.trim_start();
    if !t.starts_with('{') {
        return Ok(None);
    }
    let b = t.as_bytes();
    let mut level = 0;
    for (k, &c) in b.iter().enumerate() {
        if c == b'{' {
            level += 1;
        } else if c == b'}' {
            level -= 1;
            if level == 0 {
                return Ok(Some((&t[1..k], t[k + 1..].trim_start())));
            }
        }
    }
    Err(err(s, "unbalanced {"))
}

fn expand_expr(
    expr: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
    work: &Cell<usize>,
    out: &mut String,
) -> Result<(), ConfigError> {
    // Either a relational test `{a} op {b}` or a name, then optionally `?` / `:`.
    let (truth, rest): (Option<bool>, &str);
    let mut plain_value: Option<String> = None;
    if let Some((left, after)) = curly_payload(expr)? {
        let op_len = after
            .bytes()
            .take_while(|c| b"<>!=?+-*/~&|%".contains(c))
            .count();
        let op = &after[..op_len];
        let mut after_op = &after[op_len..];
        let mut level_op = false;
        if after_op.starts_with("level") {
            level_op = true;
            after_op = &after_op["level".len()..];
        }
        let (right, after_right) =
            curly_payload(after_op)?.ok_or_else(|| err(expr, "\"{expression}\" expected"))?;
        // Same depth as the enclosing expression: `a = ${{$a} == {x}}` must
        // hit the nesting limit, not overflow the stack.
        let (mut l, mut r) = (String::new(), String::new());
        expand_into(left, lookup, depth, work, &mut l)?;
        expand_into(right, lookup, depth, work, &mut r)?;
        let result = if level_op {
            compare_levels(&l, op, &r)
        } else {
            compare(&l, op, &r)
        }
        .ok_or_else(|| err(expr, "bad relational operator or operand"))?;
        truth = Some(result);
        rest = after_right;
        if !rest.is_empty() && !rest.starts_with('?') && !rest.starts_with(':') {
            return Err(err(expr, "\"?\" or \":\" expected"));
        }
    } else {
        let trimmed = expr.trim_start();
        let name_len = trimmed
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
            .count();
        let name = &trimmed[..name_len];
        let after = trimmed[name_len..].trim_start();
        if name.is_empty()
            || !(after.is_empty() || after.starts_with('?') || after.starts_with(':'))
        {
            return Err(err(expr, "attribute name syntax error"));
        }
        let v = lookup(name);
        charge(work, v.as_ref().map_or(0, String::len), expr)?;
        truth = Some(v.as_deref().is_some_and(|s| !s.is_empty()));
        plain_value = v;
        rest = after;
    }
    let truth = truth.unwrap_or(false);
    if rest.is_empty() {
        if let Some(v) = plain_value {
            expand_into(&v, lookup, depth, work, out)?;
        } else if truth {
            // A relational test without ?/: expands to nothing useful in Postfix either.
        }
        return Ok(());
    }
    let (mut if_true, mut if_false) = (None, None);
    let mut cur = rest;
    if let Some(t) = cur.strip_prefix('?') {
        match curly_payload(t)? {
            Some((payload, after)) => {
                if_true = Some(payload);
                cur = after;
            }
            None => {
                if_true = Some(t);
                cur = "";
            }
        }
        if !cur.is_empty() && !cur.starts_with(':') {
            return Err(err(expr, "\":\" expected"));
        }
    }
    if let Some(f) = cur.strip_prefix(':') {
        match curly_payload(f)? {
            Some((payload, after)) => {
                if_false = Some(payload);
                cur = after;
            }
            None => {
                if_false = Some(f);
                cur = "";
            }
        }
    }
    if !cur.is_empty() {
        return Err(err(expr, "unexpected input"));
    }
    let chosen = if truth { if_true } else { if_false };
    if let Some(text) = chosen {
        expand_into(text, lookup, depth, work, out)?;
    }
    Ok(())
}

fn compare(l: &str, op: &str, r: &str) -> Option<bool> {
    let numeric = !l.is_empty()
        && !r.is_empty()
        && l.bytes().all(|c| c.is_ascii_digit())
        && r.bytes().all(|c| c.is_ascii_digit());
    let ord = if numeric {
        let (a, b): (u128, u128) = (l.parse().ok()?, r.parse().ok()?);
        a.cmp(&b)
    } else {
        l.cmp(r)
    };
    apply_op(ord, op)
}

fn apply_op(ord: std::cmp::Ordering, op: &str) -> Option<bool> {
    use std::cmp::Ordering::*;
    Some(match op {
        "==" => ord == Equal,
        "!=" => ord != Equal,
        "<" => ord == Less,
        "<=" => ord != Greater,
        ">" => ord == Greater,
        ">=" => ord != Less,
        _ => return None,
    })
}

/// Parses a compatibility level `major[.minor[.patch]]` into a comparable tuple.
pub fn parse_compat_level(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

fn compare_levels(l: &str, op: &str, r: &str) -> Option<bool> {
    // Postfix treats an empty or missing compatibility_level as level 0.
    let lv = if l.is_empty() {
        Some((0, 0, 0))
    } else {
        parse_compat_level(l)
    }?;
    let rv = if r.is_empty() {
        Some((0, 0, 0))
    } else {
        parse_compat_level(r)
    }?;
    apply_op(lv.cmp(&rv), op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ex(v: &str, vars: &[(&str, &str)]) -> String {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expand(v, &|n| map.get(n).cloned()).unwrap()
    }

    #[test]
    fn plain_and_braced_names() {
        let vars = [("a", "x"), ("b", "$a-y")];
        assert_eq!(ex("$a", &vars), "x");
        assert_eq!(ex("${a}/$(a)", &vars), "x/x");
        assert_eq!(ex("$b", &vars), "x-y");
        assert_eq!(ex("$$a", &vars), "$a");
        assert_eq!(ex("$undefined.z", &vars), ".z");
    }

    #[test]
    fn conditionals() {
        let vars = [("a", "x"), ("e", "")];
        assert_eq!(ex("${a?yes}", &vars), "yes");
        assert_eq!(ex("${e?yes}", &vars), "");
        assert_eq!(ex("${e:no}", &vars), "no");
        assert_eq!(ex("${a?{$a}:{b}}", &vars), "x");
        assert_eq!(ex("${e?{t}:{f}}", &vars), "f");
        assert_eq!(
            ex(
                "${multi_instance_name?{$multi_instance_name}:{postfix}}",
                &vars
            ),
            "postfix"
        );
    }

    #[test]
    fn relational_and_levels() {
        let vars = [("compatibility_level", "3.6")];
        assert_eq!(
            ex("${{$compatibility_level} <level {1} ? {no} : {yes}}", &vars),
            "yes"
        );
        assert_eq!(
            ex("${{$compatibility_level} <level {4} ? {no} : {yes}}", &vars),
            "no"
        );
        assert_eq!(ex("${{10} > {9} ? {a} : {b}}", &vars), "a");
        assert_eq!(ex("${{abc} == {abc} ? {a} : {b}}", &vars), "a");
        let none: [(&str, &str); 0] = [];
        assert_eq!(
            ex("${{$compatibility_level} <level {2} ? {old} : {}}", &none),
            "old"
        );
    }

    #[test]
    fn errors() {
        let f = |_: &str| None;
        assert!(expand("${a", &f).is_err());
        assert!(expand("${}", &f).is_err());
        assert!(expand("$", &f).is_err());
    }
}
