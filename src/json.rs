//! JSON the gateway did not write: client bodies, external agents' output
//! lines and answers. Parsed with serde_json's own parser, through a visitor
//! that builds a [`Value`] while refusing what later stages could not carry:
//!
//! - nesting deeper than [`MAX_DEPTH`] arrays/objects. serde_json refuses
//!   anything deeper than 128 when it *reads*; every accepted value is later
//!   wrapped in envelopes and records (a job input sits 3 levels down in a
//!   job record, a result 2 levels down in a `job.result` envelope) and
//!   re-read from the log (subscribe history, §7.6) and from disk
//!   (recovery), so the edge allows half of that and leaves the rest as
//!   headroom;
//! - duplicate object keys, which serde_json would resolve silently as "last
//!   one wins" (RFC 8259 §4 leaves it undefined; two readers may disagree).
//!
//! Trailing bytes after the value are refused, as serde_json does.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects accepted from outside: `[]` is
/// depth 1, `{"a":[1]}` depth 2. Scalars at the top are depth 0.
pub const MAX_DEPTH: usize = 64;

/// Why bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON (serde_json's own description, with line and column).
    Syntax(String),
    /// Arrays/objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The same key twice in one object.
    DuplicateKey(String),
}

impl fmt::Display for JsonError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax(message) => write!(formatter, "not valid JSON ({message})"),
            JsonError::TooDeep => write!(
                formatter,
                "JSON nests arrays/objects deeper than {MAX_DEPTH} levels"
            ),
            JsonError::DuplicateKey(key) => {
                write!(formatter, "JSON object has the key {key:?} more than once")
            }
        }
    }
}

impl std::error::Error for JsonError {}

/// Parses one JSON text within the limits above.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let refusal = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let seed = ValueSeed {
        depth: 0,
        refusal: &refusal,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(error) => Err(refusal
            .take()
            .unwrap_or_else(|| JsonError::Syntax(error.to_string()))),
    }
}

/// The nesting depth of a value, as [`MAX_DEPTH`] counts it.
pub fn depth(value: &Value) -> usize {
    // Iterative, so measuring a deep value cannot overflow the stack.
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, level)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => {
                deepest = deepest.max(level);
                continue;
            }
        };
        deepest = deepest.max(level + 1);
        pending.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

/// `#[serde(deserialize_with = "crate::json::optional_object")]` for an
/// optional nested struct: serde's derived structs also accept an array and
/// read it by position, which a client must not rely on; this accepts only an
/// object (or `null`).
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    match Option::<Map<String, Value>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(object) => T::deserialize(Value::Object(object))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

#[derive(Clone, Copy)]
struct ValueSeed<'a> {
    /// Containers already open around the value being read.
    depth: usize,
    refusal: &'a Cell<Option<JsonError>>,
}

impl ValueSeed<'_> {
    fn enter<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            self.refusal.set(Some(JsonError::TooDeep));
            return Err(E::custom("nesting too deep"));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
            refusal: self.refusal,
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.refusal.set(Some(JsonError::DuplicateKey(key)));
                return Err(A::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(inner)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn accepts_up_to_the_maximum_depth_and_no_deeper() {
        assert_eq!(
            depth(&parse(nested(MAX_DEPTH).as_bytes()).unwrap()),
            MAX_DEPTH
        );
        assert_eq!(
            parse(nested(MAX_DEPTH + 1).as_bytes()),
            Err(JsonError::TooDeep)
        );
        assert_eq!(parse(nested(126).as_bytes()), Err(JsonError::TooDeep));
        // Beyond serde_json's own limit: still our refusal, not its error.
        assert_eq!(parse(nested(10_000).as_bytes()), Err(JsonError::TooDeep));
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(parse(objects.as_bytes()), Err(JsonError::TooDeep));
    }

    #[test]
    fn refuses_duplicate_keys_at_any_level() {
        assert_eq!(
            parse(br#"{"agent":"echo","agent":"ticker"}"#),
            Err(JsonError::DuplicateKey("agent".into()))
        );
        assert_eq!(
            parse(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(JsonError::DuplicateKey("b".into()))
        );
        // Escapes decode before comparison: "\u0061" is "a".
        assert_eq!(
            parse(br#"{"a":1,"\u0061":2}"#),
            Err(JsonError::DuplicateKey("a".into()))
        );
        assert!(parse(br#"{"a":{"a":1}}"#).is_ok());
    }

    #[test]
    fn matches_serde_json_on_ordinary_documents() {
        let text = br#" {"z":1,"a":[true,false,null,-1,1.5e3,18446744073709551615,"\ud83d\ude00"],"m":{}} "#;
        let ours = parse(text).unwrap();
        let theirs: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(ours, theirs);
        // Key order is kept (preserve_order), as serde_json keeps it.
        assert_eq!(ours.to_string(), theirs.to_string());
    }

    #[test]
    fn refuses_syntax_errors_and_trailing_bytes() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{} {}",
            b"1 2",
            b"nul",
            b"\"\\x\"",
            b"1e999",
        ] {
            assert!(
                matches!(parse(bad), Err(JsonError::Syntax(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(80, 400, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn bracket_soup_never_panics(text in "[\\[\\]{}\":a1, ]{0,400}") {
            let _ = parse(text.as_bytes());
        }

        /// Whatever serde_json writes is read back as serde_json reads it
        /// when within the depth limit, and refused as too deep otherwise; everything
        /// accepted re-reads with plain serde_json inside a few more levels
        /// of envelope.
        #[test]
        fn accepted_values_round_trip(value in arbitrary_json()) {
            let text = serde_json::to_vec(&value).unwrap();
            match parse(&text) {
                Ok(parsed) => {
                    prop_assert!(depth(&value) <= MAX_DEPTH);
                    // serde_json's own reading (floats are read back
                    // the same imprecise way by both).
                    let theirs: Value = serde_json::from_slice(&text).unwrap();
                    prop_assert_eq!(&parsed, &theirs);
                    let wrapped = serde_json::json!({"payload": {"result": {"x": [parsed]}}});
                    let again: Value = serde_json::from_slice(&serde_json::to_vec(&wrapped).unwrap()).unwrap();
                    prop_assert_eq!(depth(&again), depth(&wrapped));
                }
                Err(error) => {
                    prop_assert_eq!(error, JsonError::TooDeep);
                    prop_assert!(depth(&value) > MAX_DEPTH);
                }
            }
        }
    }
}
