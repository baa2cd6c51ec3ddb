//! docs/openapi.yaml held against real answers: a raw HTTP exchange that keeps the status,
//! every header and the body as sent, and a check of one answer against what the spec
//! says its route may answer (status, headers, content type, JSON Schema of the body).

use std::{collections::BTreeSet, net::SocketAddr, sync::LazyLock};

use jsonschema::{Draft, Registry};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::WAIT;

/// An HTTP answer as it came off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `code` of a JSON error body (empty when there is none).
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    /// The `access-control-*` headers: CORS.
    pub fn cors_headers(&self) -> Vec<&(String, String)> {
        self.headers.iter().filter(|(name, _)| name.starts_with("access-control-")).collect()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, String::from_utf8_lossy(&self.body))
    }
}

/// A request head (and body) for [`exchange`]: `Host` and, unless `headers` name a
/// `Connection`, `Connection: close`; `Content-Length` when there is a body.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: router\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("connection")) {
        head.push_str("Connection: close\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.into_bytes()
}

/// Sends `request` (nothing when empty) on a new connection and reads the answer: up to
/// the end of its head for a 101, to the close otherwise.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if !request.is_empty() {
        stream.write_all(request).await.unwrap();
    }
    tokio::time::timeout(WAIT, read_reply(&mut stream)).await.expect("an answer in time")
}

/// Reads one answer from `stream` (see [`exchange`]).
pub async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut bytes = Vec::new();
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("the answer is readable");
        assert!(n > 0, "closed before a complete answer: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(bytes[..head_end].to_vec()).expect("a UTF-8 head");
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|line| line.get(9..12)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    // After a 101 come WebSocket frames, not a body.
    let mut body = Vec::new();
    if status != 101 {
        body.extend_from_slice(&bytes[head_end + 4..]);
        stream.read_to_end(&mut body).await.ok();
    }
    Reply { status, headers, body }
}

/// docs/openapi.yaml, parsed.
pub struct Spec {
    doc: Value,
}

/// The base URI the spec is registered under, for its `$ref`s.
const BASE: &str = "https://presence-router.invalid/openapi.json";

/// The methods an OpenAPI path item may hold.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

pub static SPEC: LazyLock<Spec> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is YAML");
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."), "an OpenAPI 3.1 document");
    Spec { doc }
});

impl Spec {
    /// Every (METHOD, path) the spec describes.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let paths = self.doc["paths"].as_object().expect("paths");
        let mut operations = BTreeSet::new();
        for path in paths.keys() {
            let (item, _) = self.walk(&["paths", path]);
            for method in METHODS.into_iter().filter(|m| item.get(*m).is_some()) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
        operations
    }

    /// The document itself.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// `{name}`s in a path that one of its operations does not declare as a path
    /// parameter (on the path or on the operation), as `METHOD path {name}`.
    pub fn undeclared_path_parameters(&self) -> Vec<String> {
        let declared = |parameters: Option<&Value>, pointer: &str| -> Vec<String> {
            let count = parameters.and_then(Value::as_array).map_or(0, Vec::len);
            (0..count)
                .map(|i| self.follow(&format!("{pointer}/parameters/{i}")).0)
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        };
        let mut undeclared = Vec::new();
        for (method, path) in self.operations() {
            let (item, item_at) = self.walk(&["paths", &path]);
            let (op, op_at) = self.walk(&["paths", &path, &method.to_ascii_lowercase()]);
            let mut names = declared(item.get("parameters"), &item_at);
            names.extend(declared(op.get("parameters"), &op_at));
            for name in path.split('{').skip(1).filter_map(|rest| rest.split_once('}')).map(|(name, _)| name) {
                if !names.iter().any(|n| n == name) {
                    undeclared.push(format!("{method} {path} {{{name}}}"));
                }
            }
        }
        undeclared
    }

    /// Asserts that `reply` is an answer `method path` may give: its status is listed, its
    /// required headers are there, every header the response describes (and every CORS
    /// header sent) matches its schema, and its body has a listed content type and
    /// matches that schema (or is empty where the response has no content).
    pub fn check(&self, method: &str, path: &str, reply: &Reply) {
        let what = format!("{method} {path} answered {reply}");
        let status = reply.status.to_string();
        let operation = ["paths", path, &method.to_ascii_lowercase()];
        let (op, _) = self.walk(&operation);
        assert!(!op.is_null(), "docs/openapi.yaml has no {method} {path}");
        let responses = [&operation[..], &["responses", &status]].concat();
        let (response, pointer) = self.walk(&responses);
        assert!(!response.is_null(), "{what}: docs/openapi.yaml lists no {status} for it");
        self.check_response(&pointer, reply, &what);
    }

    /// Asserts that `reply` matches the response `components/responses/{name}`, for an
    /// answer to a request on no route (404).
    pub fn check_component(&self, name: &str, reply: &Reply) {
        let (_, pointer) = self.walk(&["components", "responses", name]);
        self.check_response(&pointer, reply, &format!("{name}: {reply}"));
    }

    fn check_response(&self, pointer: &str, reply: &Reply, what: &str) {
        let response = self.doc.pointer(pointer).expect("a response");
        let empty = serde_json::Map::new();
        let headers = response.get("headers").and_then(Value::as_object).unwrap_or(&empty);
        for name in headers.keys() {
            let (header, at) = self.follow(&format!("{pointer}/headers/{}", escape(name)));
            match reply.header(name) {
                None => assert!(header["required"] != json!(true), "{what}: required header {name} missing"),
                Some(value) => self.validate_header(&format!("{at}/schema"), value, &format!("{what}: header {name}")),
            }
        }
        for (name, _) in &reply.headers {
            if name.starts_with("access-control-") || name == "vary" {
                let documented = headers.keys().any(|h| h.eq_ignore_ascii_case(name));
                assert!(documented, "{what}: header {name} is not described in docs/openapi.yaml");
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(reply.body.is_empty(), "{what}: a body where the spec describes none");
            return;
        };
        let media = reply.header("content-type").unwrap_or_default().split(';').next().unwrap_or_default().trim();
        assert!(content.contains_key(media), "{what}: content type {media:?} is not one of {:?}", content.keys());
        let body = match media {
            "application/json" => serde_json::from_slice(&reply.body).expect("a JSON body"),
            _ => Value::from(String::from_utf8(reply.body.clone()).expect("a text body")),
        };
        self.validate(&format!("{pointer}/content/{}/schema", escape(media)), &body, what);
    }

    /// Validates a header's text against the schema at `pointer`: as a string, or as the
    /// integer it spells when the schema wants one (`Retry-After`).
    fn validate_header(&self, pointer: &str, value: &str, what: &str) {
        let validator = self.validator(pointer);
        match value.parse::<i64>() {
            Ok(n) if !validator.is_valid(&Value::from(value)) => self.validate(pointer, &Value::from(n), what),
            _ => self.validate(pointer, &Value::from(value), what),
        }
    }

    /// Whether `instance` matches the schema at `pointer` (a JSON pointer into the spec).
    pub fn accepts(&self, pointer: &str, instance: &Value) -> bool {
        self.validator(pointer).is_valid(instance)
    }

    /// Validates `instance` against the schema at `pointer`.
    fn validate(&self, pointer: &str, instance: &Value, what: &str) {
        let validator = self.validator(pointer);
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{e} (at {})", e.instance_path())).collect();
        assert!(errors.is_empty(), "{what}: does not match {pointer}: {errors:#?}");
    }

    /// The schema at `pointer`, `$ref`s resolved within the spec, as JSON Schema 2020-12
    /// (OpenAPI 3.1's dialect).
    fn validator(&self, pointer: &str) -> jsonschema::Validator {
        let registry = Registry::new().add(BASE, self.doc.clone()).expect("the spec").prepare().expect("the spec");
        let schema = json!({ "$ref": format!("{BASE}#{}", percent_encode(pointer)) });
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .with_registry(&registry)
            .build(&schema)
            .unwrap_or_else(|e| panic!("the schema at {pointer}: {e}"))
    }

    /// The node at `tokens` from the root, following `$ref`s on the way and at the end,
    /// and its JSON pointer; `Null` where there is none.
    fn walk(&self, tokens: &[&str]) -> (&Value, String) {
        let (mut node, mut pointer) = self.follow("");
        for token in tokens {
            match node.get(*token) {
                Some(_) => (node, pointer) = self.follow(&format!("{pointer}/{}", escape(token))),
                None => return (&Value::Null, pointer),
            }
        }
        (node, pointer)
    }

    /// The node at `pointer`, its `$ref`s followed; and the pointer it ends at.
    fn follow(&self, pointer: &str) -> (&Value, String) {
        let mut pointer = pointer.to_string();
        loop {
            let node =
                self.doc.pointer(&pointer).unwrap_or_else(|| panic!("docs/openapi.yaml has nothing at {pointer}"));
            match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
                Some(target) => pointer = target.to_string(),
                None => return (node, pointer),
            }
        }
    }
}

/// A JSON pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment.
fn percent_encode(pointer: &str) -> String {
    pointer
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
