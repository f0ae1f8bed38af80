//! What a JSON schema must be before the grammar compiler sees it. llguidance is given only
//! schemas that it compiles in bounded time and stack, and that some finite JSON value
//! satisfies:
//!
//! * at most [`MAX_DEPTH`] levels of nesting and [`MAX_NODES`] JSON values in all;
//! * numbers in `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `const` and
//!   `enum` within ±2^53 (a double's exact integers; near ±2^63 the compiler's integer ranges
//!   overflow and recurse until the stack is gone), `multipleOf` between 1e-9 and 2^53;
//! * the significant digits of all `multipleOf`s together (their product, which bounds the
//!   least common multiple the compiler takes where they meet) at most
//!   [`MAX_MULTIPLE_OF_DIGITS`]: the compiler builds an automaton with a state per residue
//!   (`multipleOf: 208237457` took all of a 24 GB machine; 99991, half a second and 70 MB);
//! * productive: a schema whose every value would have to contain itself (`{"$ref": "#"}`, a
//!   required property or item that refers back to its parent) is refused, as are `false` and
//!   empty `enum`s where a value is required. llguidance would otherwise compile such a schema
//!   and stop the answer wherever the grammar has nowhere to go.

use std::collections::HashMap;

use serde_json::Value;

/// Levels of nesting of the schema's JSON, at most.
pub const MAX_DEPTH: usize = 64;
/// JSON values (objects, arrays, strings, numbers...) in one schema, at most.
pub const MAX_NODES: usize = 20_000;
/// The largest magnitude of a number in a numeric keyword: 2^53.
pub const MAX_MAGNITUDE: f64 = 9_007_199_254_740_992.0;
/// The smallest `multipleOf`.
pub const MIN_MULTIPLE_OF: f64 = 1e-9;
/// The largest product of the significant digits of a schema's `multipleOf`s (as integers:
/// 0.25 is 25, 1000 is 1).
pub const MAX_MULTIPLE_OF_DIGITS: u64 = 10_000;

const BOUNDS: [&str; 4] = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
/// Keywords whose values are data, not schemas.
const DATA: [&str; 5] = ["const", "enum", "default", "examples", "description"];

/// Checks `schema`; the error says where (a JSON pointer into the schema) and why.
pub fn check(schema: &Value) -> Result<(), String> {
    let mut w = Walk {
        nodes: 0,
        multiples: 1,
    };
    walk(schema, "#", 0, &mut w)?;
    productive_root(schema)
}

/// What the walk has counted so far.
struct Walk {
    nodes: usize,
    /// The product of the `multipleOf`s' significant digits.
    multiples: u64,
}

/// The significant digits of a number as an integer (`0.0250` → 25, `1e3` → 1), or `None`
/// past 18 digits.
fn significant(n: &serde_json::Number) -> Option<u64> {
    let text = n.to_string();
    let mantissa = text
        .trim_start_matches('-')
        .split(['e', 'E'])
        .next()
        .unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0').trim_end_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 18 {
        return None;
    }
    digits.parse().ok()
}

fn multiple_of(n: &serde_json::Number, at: &str, w: &mut Walk) -> Result<(), String> {
    let x = n.as_f64().unwrap_or(f64::INFINITY);
    if !(MIN_MULTIPLE_OF..=MAX_MAGNITUDE).contains(&x) {
        return Err(format!("{at}: multipleOf {x} is outside [1e-9, 2^53]"));
    }
    let digits = significant(n).unwrap_or(u64::MAX);
    w.multiples = w.multiples.saturating_mul(digits.max(1));
    if w.multiples > MAX_MULTIPLE_OF_DIGITS {
        return Err(format!(
            "{at}: multipleOf {n} has too many significant digits: the product of a schema's \
             multipleOf values read as integers (0.25 counts 25, 1000 counts 1) may be at most \
             {MAX_MULTIPLE_OF_DIGITS}"
        ));
    }
    Ok(())
}

fn walk(v: &Value, path: &str, depth: usize, w: &mut Walk) -> Result<(), String> {
    visit(&mut w.nodes, path, depth)?;
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}/{i}"), depth + 1, w)?;
            }
        }
        Value::Object(map) => {
            for (k, child) in map {
                let at = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                if BOUNDS.contains(&k.as_str()) {
                    if let Some(x) = child.as_f64() {
                        magnitude(x, &at)?;
                    }
                } else if k == "multipleOf" {
                    if let Value::Number(n) = child {
                        multiple_of(n, &at, w)?;
                    }
                } else if k == "const" || k == "enum" {
                    data_numbers(child, &at, depth + 1, &mut w.nodes)?;
                    continue;
                }
                if DATA.contains(&k.as_str()) {
                    count(child, &at, depth + 1, &mut w.nodes)?;
                } else {
                    walk(child, &at, depth + 1, w)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn magnitude(x: f64, at: &str) -> Result<(), String> {
    if x.abs() > MAX_MAGNITUDE {
        return Err(format!(
            "{at}: {x} is beyond ±2^53 (9007199254740992), the numbers a schema may bound or \
             name"
        ));
    }
    Ok(())
}

/// The numbers of a `const` or `enum` value, which the compiler turns into ranges.
fn data_numbers(v: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<(), String> {
    count(v, path, depth, nodes)?;
    let mut stack = vec![(v, path.to_string())];
    while let Some((v, at)) = stack.pop() {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(x) => magnitude(x, &at)?,
                None => return Err(format!("{at}: {n} is not a number bora can hold")),
            },
            Value::Array(a) => {
                stack.extend(a.iter().enumerate().map(|(i, x)| (x, format!("{at}/{i}"))))
            }
            Value::Object(m) => stack.extend(m.iter().map(|(k, x)| (x, format!("{at}/{k}")))),
            _ => {}
        }
    }
    Ok(())
}

/// Counts one JSON value at `depth` against the limits of size and depth.
fn visit(nodes: &mut usize, path: &str, depth: usize) -> Result<(), String> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(format!(
            "the schema has more than {MAX_NODES} JSON values; bora compiles schemas up to that size"
        ));
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "the schema is nested more than {MAX_DEPTH} levels deep (at {path})"
        ));
    }
    Ok(())
}

/// Counts a data value's nodes against the limits (depth and size), without reading it.
fn count(v: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<(), String> {
    visit(nodes, path, depth)?;
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| count(x, path, depth + 1, nodes)),
        Value::Object(m) => m
            .values()
            .try_for_each(|x| count(x, path, depth + 1, nodes)),
        _ => Ok(()),
    }
}

/// Whether some finite value satisfies the schema: the least fixed point over its local
/// `$ref`s (each assumed to have no finite value until shown to have one).
fn productive_root(root: &Value) -> Result<(), String> {
    let mut refs = Vec::new();
    collect_refs(root, &mut refs);
    refs.sort();
    refs.dedup();
    let mut known: HashMap<String, bool> = refs.iter().map(|r| (r.clone(), false)).collect();
    loop {
        let mut changed = false;
        for r in &refs {
            if known[r] {
                continue;
            }
            let ok = match resolve(root, r) {
                Some(target) => productive(target, root, &known).is_ok(),
                // Not a local reference: the compiler answers for it.
                None => true,
            };
            if ok {
                known.insert(r.clone(), true);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    productive(root, root, &known)
        .map_err(|why| format!("no finite JSON value satisfies the schema: {why}"))
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            for (k, x) in m {
                if !DATA.contains(&k.as_str()) {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// A local reference (`#`, `#/$defs/x`) in `root`.
fn resolve<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let pointer = r.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

fn productive(s: &Value, root: &Value, known: &HashMap<String, bool>) -> Result<(), String> {
    let m = match s {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err("`false` admits no value".into()),
        Value::Object(m) => m,
        _ => return Ok(()),
    };
    if let Some(Value::String(r)) = m.get("$ref") {
        if resolve(root, r).is_some() && !known.get(r).copied().unwrap_or(true) {
            return Err(format!(
                "`{r}` must hold a value of itself, without end (a cycle of $refs through \
                 required properties or items)"
            ));
        }
    }
    if let Some(Value::Array(all)) = m.get("allOf") {
        for s in all {
            productive(s, root, known)?;
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(any)) = m.get(key) {
            let mut why = None;
            if !any.iter().any(|s| {
                productive(s, root, known)
                    .map_err(|e| why = Some(e))
                    .is_ok()
            }) {
                return Err(why.unwrap_or_else(|| format!("`{key}` is empty")));
            }
        }
    }
    if let Some(Value::Array(values)) = m.get("enum") {
        if values.is_empty() {
            return Err("an empty `enum` admits no value".into());
        }
    }
    // `required` and `minItems` bind objects and arrays only: a schema that also admits
    // another type has a value of that type.
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    let mut why = None;
    for t in &types {
        let r = match *t {
            "object" => object_productive(m, root, known),
            "array" => array_productive(m, root, known),
            _ => return Ok(()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => why = Some(e),
        }
    }
    Err(why.unwrap_or_else(|| "`type` names no type".into()))
}

fn object_productive(
    m: &serde_json::Map<String, Value>,
    root: &Value,
    known: &HashMap<String, bool>,
) -> Result<(), String> {
    let Some(Value::Array(required)) = m.get("required") else {
        return Ok(());
    };
    for name in required.iter().filter_map(Value::as_str) {
        let schema = m
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| m.get("additionalProperties"));
        if let Some(s) = schema {
            productive(s, root, known).map_err(|e| format!("required property `{name}`: {e}"))?;
        }
    }
    Ok(())
}

fn array_productive(
    m: &serde_json::Map<String, Value>,
    root: &Value,
    known: &HashMap<String, bool>,
) -> Result<(), String> {
    let min = m.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
    if min == 0 {
        return Ok(());
    }
    let prefix = match m.get("prefixItems") {
        Some(Value::Array(p)) => p.as_slice(),
        _ => &[],
    };
    for (i, s) in prefix.iter().take(min).enumerate() {
        productive(s, root, known).map_err(|e| format!("item {i}: {e}"))?;
    }
    if min > prefix.len() {
        if let Some(items) = m.get("items") {
            productive(items, root, known).map_err(|e| format!("items: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(s: Value) -> String {
        check(&s).expect_err(&s.to_string())
    }

    #[test]
    fn numbers_beyond_two_to_the_53_are_refused_where_the_compiler_reads_them() {
        for s in [
            json!({"enum": [-9223372036854775808i64]}),
            json!({"const": -9223372036854775807i64}),
            json!({"type": "object", "properties": {"a": {"const": {"x": [1, 1e300]}}}}),
            json!({"type": "integer", "maximum": 18446744073709551615u64}),
            json!({"type": "number", "exclusiveMinimum": -1e20}),
        ] {
            let e = err(s);
            assert!(e.contains("2^53"), "{e}");
        }
        let e = err(json!({"properties": {"a": {"enum": [1, -9223372036854775808i64]}}}));
        assert!(e.starts_with("#/properties/a/enum/1:"), "{e}");
        let e = err(json!({"type": "integer", "multipleOf": 1e-10}));
        assert!(e.contains("multipleOf"), "{e}");
        // Found by the fuzz target: an automaton state per residue (this one took 24 GB).
        let e = err(json!({"type": "integer", "multipleOf": 208237457}));
        assert!(e.contains("significant digits"), "{e}");
        // Where they meet, the compiler takes their least common multiple.
        let e = err(json!({"allOf": [{"multipleOf": 97}, {"multipleOf": 89}, {"multipleOf": 3}]}));
        assert!(e.contains("significant digits"), "{e}");
        check(&json!({"type": "number", "multipleOf": 0.0025})).unwrap();
        check(&json!({"type": "integer", "multipleOf": 5000})).unwrap();
        check(&json!({"allOf": [{"multipleOf": 97}, {"multipleOf": 89}]})).unwrap();
        // Data elsewhere and numbers within range are fine.
        check(&json!({"type": "integer", "minimum": -9007199254740992i64, "default": 1e300, "examples": [1e300]})).unwrap();
        check(&json!({"enum": [0.5, -3, "x", null]})).unwrap();
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut s = json!({"type": "integer"});
        for _ in 0..MAX_DEPTH {
            s = json!({"type": "array", "items": s});
        }
        assert!(err(s).contains("nested more than"));
        let props: serde_json::Map<String, Value> = (0..MAX_NODES)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        let e = err(json!({"type": "object", "properties": props}));
        assert!(e.contains("more than 20000"), "{e}");
    }

    #[test]
    fn schemas_no_finite_value_satisfies_are_refused() {
        for s in [
            json!({"$ref": "#"}),
            json!({"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}}, "$ref": "#/$defs/n"}),
            json!({"type": "object", "properties": {"a": false}, "required": ["a"]}),
            json!({"type": "array", "items": {"$ref": "#"}, "minItems": 1}),
            json!({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}),
            json!({"anyOf": [{"$ref": "#"}, false]}),
        ] {
            let e = err(s);
            assert!(
                e.starts_with("no finite JSON value satisfies the schema"),
                "{e}"
            );
        }
        // Recursion with a way out is fine: an optional child, a list that may be empty, an
        // alternative, a type other than object.
        for s in [
            json!({"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}),
            json!({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}, "required": ["kids"]}),
            json!({"anyOf": [{"$ref": "#"}, {"type": "null"}]}),
            json!({"type": ["object", "null"], "properties": {"c": {"$ref": "#"}}, "required": ["c"]}),
            json!({"properties": {"c": {"$ref": "#"}}, "required": ["c"]}),
            json!({"$ref": "https://example.com/schema"}),
        ] {
            check(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}
