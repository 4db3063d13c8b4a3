//! Reading policy and manifest files: bounded in size, UTF-8 only, and
//! YAML positions carried over to the file's own line numbers.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::parse_policy;
use crate::model::{Policy, PolicyError};

/// A policy is a handful of kilobytes; anything near this is a mistake (a
/// log file, a binary) and should not be read into memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 << 20;

/// Reads and validates the policy file at `path`.
pub fn load_policy_file(path: &Path) -> Result<Policy, PolicyError> {
    let text = read_policy_text(path)?;
    parse_policy(&text, &path.display().to_string())
}

/// Reads a policy or manifest file as text: at most
/// [`MAX_POLICY_FILE_BYTES`], UTF-8.
pub fn read_policy_text(path: &Path) -> Result<String, PolicyError> {
    let io = |error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let too_large = |size| PolicyError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_POLICY_FILE_BYTES,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_POLICY_FILE_BYTES {
        return Err(too_large(size));
    }
    // The file may grow between stat and read (or be a pipe that reports
    // size 0), so the read itself is bounded too.
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// At most this many events replayed from aliases in one document: far
/// more than a policy or a Kubernetes object sharing a few lists through
/// anchors needs, and a "billion laughs" alias bomb stops here instead of
/// expanding.
pub const MAX_ALIAS_REPLAYED_EVENTS: usize = 100_000;

/// The YAML reading rules of every policy and manifest file:
///
/// - YAML 1.2 booleans: only `true`/`false` (any case) are booleans, so
///   `enabled: yes` or `on` is an error rather than a silent `true`, and an
///   untyped `on` stays the string `"on"` (as serde_yaml had it);
/// - `0o17` and `0x1F` are integers; no YAML 1.1 octal (`0755`, below);
/// - a duplicate mapping key is an error naming its line;
/// - alias expansion is bounded ([`MAX_ALIAS_REPLAYED_EVENTS`]), nesting
///   too; the event and node budgets grow with the text, which the callers
///   have already bounded ([`MAX_POLICY_FILE_BYTES`]);
/// - `.nan`/`.inf` in an untyped value stay strings rather than failing;
/// - a plain number written with a leading zero (`0755`) is the string
///   `"0755"` where the type is open (a [`serde_json::Value`], a port list):
///   YAML 1.1 reads it as octal, 1.2 as decimal, and guessing either is
///   worse than keeping what was written. The policy's numbers refuse it.
fn yaml_options(text: &str) -> serde_saphyr::Options {
    let len = text.len();
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: (2 * len + 1024).max(1_000_000) + MAX_ALIAS_REPLAYED_EVENTS,
            max_nodes: (len + 1024).max(250_000) + MAX_ALIAS_REPLAYED_EVENTS,
            max_total_scalar_bytes: len + (4 << 20),
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAYED_EVENTS,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        strict_booleans: true,
        legacy_octal_numbers: false,
        leading_zero_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    }
}

/// Positions as serde_yaml wrote them ("at line L column C"), so messages
/// read the same whichever file or document they come from.
struct Positions;

impl serde_saphyr::Localizer for Positions {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        loc: serde_saphyr::Location,
    ) -> std::borrow::Cow<'a, str> {
        if loc == serde_saphyr::Location::UNKNOWN {
            base
        } else {
            format!("{base} at line {} column {}", loc.line(), loc.column()).into()
        }
    }

    fn alias_defined_at(&self, defined: serde_saphyr::Location) -> String {
        format!(
            " (alias defined at line {} column {})",
            defined.line(),
            defined.column()
        )
    }

    fn alias_used_at(&self, used: serde_saphyr::Location) -> String {
        if used == serde_saphyr::Location::UNKNOWN {
            String::new()
        } else {
            format!(" at line {} column {}", used.line(), used.column())
        }
    }
}

/// Deserializes the one YAML document in `text` as a `T` under the rules of
/// [`yaml_options`]. The error message is `"{field path}: {message} at line
/// L column C"` (the path left out at the top level), with `L` counted from
/// the file's start: `text` starts on line `line_offset + 1`.
pub(crate) fn from_yaml_str<'de, T: Deserialize<'de>>(
    text: &'de str,
    line_offset: usize,
) -> Result<T, String> {
    let mut path = None;
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(text), |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = Some(e.path().to_string());
                e.into_inner()
            })
        });
    result.map_err(|e| {
        let formatter = serde_saphyr::UserMessageFormatter.with_localizer(&Positions);
        let message = e.render_with_options(serde_saphyr::render_options! {
            formatter: &formatter,
            snippets: serde_saphyr::SnippetMode::Off,
            line_offset: line_offset as u64,
        });
        // serde_path_to_error writes "." for the document itself and "?"
        // for a key it has not read yet (a duplicate or null key): the
        // message names the key, the path stops at its map.
        let path = path.unwrap_or_default();
        let path = path.trim_end_matches('?').trim_end_matches('.');
        if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

/// Parses the one YAML document in `text` (no `---` between documents; the
/// caller splits a stream) into a JSON value, under the same rules as the
/// ClassifierPolicy file (see [`yaml_options`]). `text` starts on line
/// `line_offset + 1` of `origin`: errors are [`PolicyError::Syntax`] whose
/// message names the field path, the problem and the file's own line and
/// column, like `"spec.ports[0]: duplicate mapping key ... at line 12
/// column 7"`.
///
/// Mapping keys become strings: a scalar key keeps its spelling (`80: x`
/// gives `"80"`, `0x1F: x` gives `"0x1F"`); a null key or a sequence or
/// mapping key is an error naming its line, and so are two keys of one
/// mapping that give the same string (`80:` and `"80":`). Empty text is
/// `null`.
pub fn parse_yaml_value(
    text: &str,
    origin: &str,
    line_offset: usize,
) -> Result<serde_json::Value, PolicyError> {
    from_yaml_str(text, line_offset)
        .map(|JsonValue(v)| v)
        .map_err(|message| PolicyError::Syntax {
            origin: origin.to_string(),
            message,
        })
}

/// A [`serde_json::Value`] read from YAML, refusing two keys of one mapping
/// that become the same string (`80:` and `"80":` are different YAML keys,
/// so the YAML reader lets them both through).
struct JsonValue(serde_json::Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonValue, E> {
                // Non-finite floats arrive as strings (yaml_options).
                Ok(JsonValue(
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::String(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::String(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Null))
            }
            fn visit_some<D2: serde::Deserializer<'de>>(
                self,
                d: D2,
            ) -> Result<JsonValue, D2::Error> {
                JsonValue::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(JsonValue(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(JsonValue(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key_seed(NewKey(&out))? {
                    let JsonValue(v) = map.next_value()?;
                    out.insert(key, v);
                }
                Ok(JsonValue(Value::Object(out)))
            }
        }

        /// A mapping key as a string, refused if the map already has it;
        /// checked while the key is read, so the error points at the key.
        struct NewKey<'m>(&'m serde_json::Map<String, Value>);
        impl<'de> de::DeserializeSeed<'de> for NewKey<'_> {
            type Value = String;
            fn deserialize<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<String, D2::Error> {
                d.deserialize_string(self)
            }
        }
        impl Visitor<'_> for NewKey<'_> {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                if self.0.contains_key(v) {
                    return Err(E::custom(format!(
                        "duplicate mapping key {v:?} (two keys written differently, read as the same string)"
                    )));
                }
                Ok(v.to_owned())
            }
        }
        d.deserialize_any(V)
    }
}

/// `v` as a YAML document (serde-saphyr's serializer), for whatever needs a
/// Kubernetes object or a policy back as YAML text.
pub fn to_yaml_string<T: Serialize>(v: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(v)
}
