//! Serde helpers that hold request payloads to their JSON types.
//!
//! serde reads a struct from a JSON array too, by position, so without these
//! `"capabilities": [null, ["json"]]` would be taken for an object. A payload
//! member that is a record must be a JSON object (§5: payloads are objects).

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Reads an optional record member: absent or `null` is `None`, an object is
/// read as `T`, anything else (an array included) is refused.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let Some(object) = Option::<Map<String, Value>>::deserialize(deserializer)? else {
        return Ok(None);
    };
    T::deserialize(Value::Object(object))
        .map(Some)
        .map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        #[serde(default)]
        a: Option<u8>,
        #[serde(default)]
        b: Option<u8>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(default, deserialize_with = "super::optional_object")]
        inner: Option<Inner>,
    }

    fn read(value: serde_json::Value) -> Result<Outer, String> {
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    #[test]
    fn objects_null_and_absence_are_read() {
        assert_eq!(
            read(json!({"inner": {"a": 1}})),
            Ok(Outer {
                inner: Some(Inner {
                    a: Some(1),
                    b: None
                })
            })
        );
        assert_eq!(read(json!({"inner": null})), Ok(Outer { inner: None }));
        assert_eq!(read(json!({})), Ok(Outer { inner: None }));
    }

    #[test]
    fn arrays_and_scalars_are_refused() {
        // Plain serde would read this array as `Inner { a: 1, b: 2 }`.
        for value in [json!([1, 2]), json!([]), json!("x"), json!(3), json!(true)] {
            let error = read(json!({ "inner": value })).expect_err("refused");
            assert!(error.contains("expected a map"), "{error}");
        }
        let error = read(json!({"inner": {"a": "x"}})).expect_err("refused");
        assert!(error.contains("invalid type"), "{error}");
    }
}
