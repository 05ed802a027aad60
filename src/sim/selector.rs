//! Label and field selectors (the `labels.Parse` / `fields.ParseSelector` grammar).

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct LabelReq {
    key: String,
    op: LabelOp,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {}", msg.into()))
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(valid_dns_label))
    {
        return false;
    }
    !name.is_empty() && name.len() <= 63 && valid_label_value(name)
}

fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Label values: empty, or <=63 chars of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
pub(crate) fn valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    v.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, ApiError> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(bad("found ')', expected: identifier"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad("found '', expected: ')'"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(format!("found '{rest}', expected: '('")))?;
    let mut vals = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_label_value(v) {
            return Err(bad(format!("invalid label value: \"{v}\"")));
        }
        vals.push(v.to_string());
    }
    Ok(vals)
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let s = s.trim();
        let mut reqs = Vec::new();
        if s.is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad("found '', expected: identifier"));
            }
            let (key, op) = if let Some(k) = p.strip_prefix('!') {
                (k.trim().to_string(), LabelOp::NotExists)
            } else if let Some((k, v)) = p.split_once("!=") {
                (k.trim().to_string(), LabelOp::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once("==") {
                (k.trim().to_string(), LabelOp::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once('=') {
                (k.trim().to_string(), LabelOp::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once('>') {
                let n = v.trim().parse::<i64>().map_err(|_| {
                    bad(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v}"
                    ))
                })?;
                (k.trim().to_string(), LabelOp::Gt(n))
            } else if let Some((k, v)) = p.split_once('<') {
                let n = v.trim().parse::<i64>().map_err(|_| {
                    bad(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v}"
                    ))
                })?;
                (k.trim().to_string(), LabelOp::Lt(n))
            } else if let Some(idx) = p.find(" notin ").or_else(|| p.find(" notin(")) {
                (
                    p[..idx].trim().to_string(),
                    LabelOp::NotIn(parse_set(&p[idx + 6..])?),
                )
            } else if let Some(idx) = p.find(" in ").or_else(|| p.find(" in(")) {
                (
                    p[..idx].trim().to_string(),
                    LabelOp::In(parse_set(&p[idx + 3..])?),
                )
            } else {
                (p.to_string(), LabelOp::Exists)
            };
            if !valid_label_key(&key) {
                return Err(bad(format!("invalid label key \"{key}\"")));
            }
            if let LabelOp::Eq(v) | LabelOp::NotEq(v) = &op
                && !valid_label_value(v)
            {
                return Err(bad(format!("invalid label value: \"{v}\"")));
            }
            reqs.push(LabelReq { key, op });
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Matches the object's `metadata.labels`.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match &r.op {
            LabelOp::Eq(v) => get(&r.key) == Some(v.as_str()),
            LabelOp::NotEq(v) => get(&r.key) != Some(v.as_str()),
            LabelOp::In(vs) => get(&r.key).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelOp::NotIn(vs) => get(&r.key).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelOp::Exists => get(&r.key).is_some(),
            LabelOp::NotExists => get(&r.key).is_none(),
            LabelOp::Gt(n) => get(&r.key)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelOp::Lt(n) => get(&r.key)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A supported field label: the label, the JSON path it reads, and the value when absent.
#[derive(Debug, Clone)]
pub(crate) struct FieldLabel {
    pub label: String,
    pub path: Vec<String>,
    pub default: String,
}

impl FieldLabel {
    pub fn new(label: &str, default: &str) -> Self {
        FieldLabel {
            label: label.to_string(),
            path: label.split('.').map(str::to_string).collect(),
            default: default.to_string(),
        }
    }
    pub fn aliased(label: &str, path: &str) -> Self {
        FieldLabel {
            label: label.to_string(),
            path: path.split('.').map(str::to_string).collect(),
            default: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct FieldReq {
    path: Vec<String>,
    default: String,
    value: String,
    negate: bool,
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector {
    reqs: Vec<FieldReq>,
}

/// Splits on unescaped commas and unescapes `\,`, `\=`, `\\`.
fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Finds the operator outside escapes; returns (lhs, op, rhs).
fn split_op(term: &str) -> Option<(&str, &'static str, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'!' if b.get(i + 1) == Some(&b'=') => return Some((&term[..i], "!=", &term[i + 2..])),
            b'=' if b.get(i + 1) == Some(&b'=') => return Some((&term[..i], "==", &term[i + 2..])),
            b'=' => return Some((&term[..i], "=", &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    pub fn parse(s: &str, supported: &[FieldLabel]) -> Result<Self, ApiError> {
        let s = s.trim();
        let mut reqs = Vec::new();
        if s.is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for term in split_escaped(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (lhs, op, rhs) = split_op(term).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ))
            })?;
            let label = lhs.trim();
            let fl = supported.iter().find(|f| f.label == label).ok_or_else(|| {
                ApiError::bad_request(format!("field label not supported: {label}"))
            })?;
            reqs.push(FieldReq {
                path: fl.path.clone(),
                default: fl.default.clone(),
                value: unescape(rhs),
                negate: op == "!=",
            });
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let mut cur = Some(obj);
            for seg in &r.path {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                None | Some(Value::Null) => r.default.clone(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == r.value) != r.negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_grammar() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "x", "example.com/k": "v"}}});
        for (sel, want) in [
            ("a=1", true),
            ("a==1", true),
            ("a!=1", false),
            ("a in (1,2)", true),
            ("a notin (1,2)", false),
            ("c notin (1)", true),
            ("a,b", true),
            ("!a", false),
            ("!c", true),
            ("a in (1, 2),b=x", true),
            ("example.com/k=v", true),
            ("a>0", true),
            ("a<1", false),
            ("", true),
        ] {
            let s = LabelSelector::parse(sel).expect(sel);
            assert_eq!(s.matches(&o), want, "{sel}");
        }
        for badsel in ["a=(", "a in 1", "=x", "a=b c", "Bad Key=1", "a in (1"] {
            assert!(LabelSelector::parse(badsel).is_err(), "{badsel}");
        }
    }

    #[test]
    fn field_grammar() {
        let labels = [
            FieldLabel::new("spec.nodeName", ""),
            FieldLabel::new("metadata.name", ""),
        ];
        let o = json!({"metadata": {"name": "p,1"}, "spec": {"nodeName": "n1"}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1", &labels)
                .expect("ok")
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName!=n1", &labels)
                .expect("ok")
                .matches(&o)
        );
        assert!(
            FieldSelector::parse(r"metadata.name=p\,1", &labels)
                .expect("ok")
                .matches(&o)
        );
        let e = FieldSelector::parse("spec.other=x", &labels).expect_err("unsupported");
        assert_eq!(e.message, "field label not supported: spec.other");
    }
}
