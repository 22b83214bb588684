//! Request bodies in Kubernetes' protobuf encoding, for the built-in kinds the emulator serves
//! that kubectl creates through typed clients (`kubectl create namespace|secret|configmap`: since
//! kubectl 1.32 those POST `application/vnd.kubernetes.protobuf`). Decoded with the k8s-pb
//! bindings into the JSON the store keeps; responses stay JSON, which kubectl accepts.
//!
//! Wire format (kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding): the
//! magic `k8s\0`, then a `runtime.Unknown` envelope naming apiVersion and kind, whose `raw` is the
//! object's own protobuf.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtobufError {
    #[error("the protobuf body does not start with the k8s\\0 magic")]
    NoMagic,
    #[error("the protobuf body is not a valid {what}: {message}")]
    Decode { what: &'static str, message: String },
    #[error(
        "this emulator decodes protobuf bodies for v1 Namespace, Secret and ConfigMap only, not {0}; send JSON (e.g. kubectl apply -f)"
    )]
    UnsupportedKind(String),
}

fn decode<M: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, ProtobufError> {
    M::decode(bytes).map_err(|e| ProtobufError::Decode { what, message: e.to_string() })
}

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let unknown: Unknown = decode("runtime.Unknown envelope", envelope)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns: core::Namespace = decode("v1 Namespace", &raw)?;
            let mut o = Map::new();
            o.insert("metadata".into(), metadata(ns.metadata));
            if let Some(spec) = ns.spec
                && !spec.finalizers.is_empty()
            {
                o.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
            o
        }
        ("v1", "Secret") => {
            let secret: core::Secret = decode("v1 Secret", &raw)?;
            let mut o = Map::new();
            o.insert("metadata".into(), metadata(secret.metadata));
            let data: BTreeMap<&String, String> =
                secret.data.iter().map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v))).collect();
            insert_map(&mut o, "data", data);
            insert_map(&mut o, "stringData", secret.string_data.iter().collect::<BTreeMap<_, _>>());
            // The API server's defaulting: a Secret without a type is Opaque.
            let kind = secret.r#type.filter(|t| !t.is_empty()).unwrap_or_else(|| "Opaque".into());
            o.insert("type".into(), json!(kind));
            if let Some(i) = secret.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        ("v1", "ConfigMap") => {
            let cm: core::ConfigMap = decode("v1 ConfigMap", &raw)?;
            let mut o = Map::new();
            o.insert("metadata".into(), metadata(cm.metadata));
            insert_map(&mut o, "data", cm.data.iter().collect::<BTreeMap<_, _>>());
            let binary: BTreeMap<&String, String> =
                cm.binary_data.iter().map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v))).collect();
            insert_map(&mut o, "binaryData", binary);
            if let Some(i) = cm.immutable {
                o.insert("immutable".into(), json!(i));
            }
            o
        }
        _ => return Err(ProtobufError::UnsupportedKind(format!("{api_version} {kind}"))),
    };
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

fn insert_map<K: serde::Serialize + Ord, V: serde::Serialize>(
    o: &mut Map<String, Value>,
    key: &str,
    map: BTreeMap<K, V>,
) {
    if !map.is_empty() {
        o.insert(key.into(), json!(map));
    }
}

/// The metadata a client may set on create (the server fills in the rest).
fn metadata(meta: Option<ObjectMeta>) -> Value {
    let meta = meta.unwrap_or_default();
    let mut o = Map::new();
    for (key, value) in [("name", meta.name), ("generateName", meta.generate_name), ("namespace", meta.namespace)] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            o.insert(key.into(), json!(v));
        }
    }
    insert_map(&mut o, "labels", meta.labels.iter().collect::<BTreeMap<_, _>>());
    insert_map(&mut o, "annotations", meta.annotations.iter().collect::<BTreeMap<_, _>>());
    if !meta.finalizers.is_empty() {
        o.insert("finalizers".into(), json!(meta.finalizers));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn wire(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
    }

    #[test]
    fn decodes_what_kubectl_create_sends() {
        let meta = ObjectMeta {
            name: Some("team-a".into()),
            labels: [("team".to_owned(), "a".to_owned())].into_iter().collect(),
            ..Default::default()
        };
        let ns = core::Namespace { metadata: Some(meta.clone()), ..Default::default() };
        let value = decode_object(&wire("v1", "Namespace", ns.encode_to_vec())).expect("namespace");
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "a"}}})
        );

        let secret = core::Secret {
            metadata: Some(ObjectMeta { name: Some("sp".into()), ..Default::default() }),
            data: [("clientSecret".to_owned(), b"s3cret".to_vec())].into_iter().collect(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let value = decode_object(&wire("v1", "Secret", secret.encode_to_vec())).expect("secret");
        assert_eq!(value["data"]["clientSecret"], "czNjcmV0");
        assert_eq!(value["type"], "Opaque");

        let cm = core::ConfigMap {
            metadata: Some(ObjectMeta { name: Some("c".into()), ..Default::default() }),
            data: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(decode_object(&wire("v1", "ConfigMap", cm.encode_to_vec())).expect("cm")["data"]["k"], "v");
    }

    #[test]
    fn junk_is_a_specific_error_never_a_panic() {
        assert_eq!(decode_object(b"{}"), Err(ProtobufError::NoMagic));
        assert!(matches!(decode_object(b"k8s\0\xff\xff\xff"), Err(ProtobufError::Decode { .. })));
        assert!(matches!(
            decode_object(&wire("v1", "Pod", vec![])),
            Err(ProtobufError::UnsupportedKind(k)) if k == "v1 Pod"
        ));
        assert!(matches!(decode_object(&wire("v1", "Secret", vec![0xff; 7])), Err(ProtobufError::Decode { .. })));
    }
}
