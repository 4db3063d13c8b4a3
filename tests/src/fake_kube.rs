//! A fake Kubernetes API server for tests: speaks the list and watch wire
//! format (HTTP/1.1, JSON lists with `metadata.resourceVersion`, chunked
//! streams of newline-delimited watch events) from recorded responses in
//! `tests/fixtures/kube/`. Used by the watch tests and by the agent's
//! `--kubernetes` end-to-end test.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
    sync::watch,
    task::JoinHandle,
};

// ---------------------------------------------------------------------------
// The fake API server
// ---------------------------------------------------------------------------

/// A connection the server speaks HTTP/1.1 on: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Up,
    /// Every request gets a 500 Status (an API server whose etcd is gone).
    Error500,
}

pub struct Resource {
    list_kind: String,
    api_version: String,
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, watch event) in order.
    log: Vec<(u64, Value)>,
}

pub struct State {
    rv: u64,
    resources: BTreeMap<String, Resource>,
    mode: Mode,
    /// Bumped to drop every open watch stream.
    epoch: u64,
    /// Bumped to end every open watch stream cleanly, as the API server
    /// does when a watch's `timeoutSeconds` is over.
    ended: u64,
    /// Watch history before this resourceVersion is gone (etcd compaction):
    /// a watch from older versions gets `410 Expired`.
    compacted: u64,
    requests: Vec<String>,
    /// Every successful write, as "METHOD PATH", in order.
    writes: Vec<String>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Ticks on every change of `state` that open watches must see.
    tick: watch::Sender<u64>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube")
}

pub fn fixture(name: &str) -> Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const SERVICES: &str = "/api/v1/services";
pub const PODS: &str = "/api/v1/pods";
pub const EGRESS: &str = "/apis/policy.linkerd.io/v1alpha1/egressnetworks";
pub const SERVERS: &str = "/apis/policy.linkerd.io/v1beta3/servers";

pub const ALL: &[(&str, &str)] = &[
    (NAMESPACES, "namespaces.list.json"),
    (SERVICES, "services.list.json"),
    (PODS, "pods.list.json"),
    (EGRESS, "egressnetworks.list.json"),
    (SERVERS, "servers.list.json"),
];

impl FakeApi {
    /// Serve the recorded lists for `paths` (other paths answer 404, as the
    /// API server does for a CRD that is not installed).
    pub async fn start(paths: &[&str]) -> Arc<FakeApi> {
        let mut resources = BTreeMap::new();
        let mut rv = 0;
        for (path, file) in ALL {
            if !paths.contains(path) {
                continue;
            }
            let list = fixture(file);
            rv = rv.max(
                list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
            let mut objects = BTreeMap::new();
            for item in list["items"].as_array().unwrap() {
                objects.insert(key_of(item), item.clone());
            }
            resources.insert(
                path.to_string(),
                Resource {
                    list_kind: list["kind"].as_str().unwrap().to_owned(),
                    api_version: list["apiVersion"].as_str().unwrap().to_owned(),
                    objects,
                    log: Vec::new(),
                },
            );
        }
        let state = Arc::new(Mutex::new(State {
            rv,
            resources,
            mode: Mode::Up,
            epoch: 0,
            ended: 0,
            compacted: 0,
            requests: Vec::new(),
            writes: Vec::new(),
        }));
        let listener = bind("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(FakeApi {
            addr,
            state,
            tick: watch::channel(0).0,
            accept: Mutex::new(None),
        });
        fake.serve(listener);
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose one context points at this server, for an
    /// agent's `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.url()
        )
    }

    pub fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let _ = me.handle(stream).await;
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Serves HTTPS on `addr` with `tls` (in-cluster clients only speak
    /// HTTPS): for an agent in a pod that reads the projected
    /// service-account token and CA.
    pub async fn start_tls(
        paths: &[&str],
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> Arc<FakeApi> {
        let fake = Self::start(paths).await;
        fake.stop();
        let listener = bind(addr);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let me = fake.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (me, acceptor) = (me.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = me.handle(tls).await;
                    }
                });
            }
        });
        *fake.accept.lock().unwrap() = Some(task);
        fake
    }

    /// The API server goes away: the listener is closed (connections are
    /// refused) and open watch streams are cut.
    pub fn stop(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.bump_epoch();
    }

    /// ...and comes back on the same address.
    pub fn restart(self: &Arc<Self>) {
        let listener = bind(self.addr);
        self.serve(listener);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
        self.bump_epoch();
    }

    /// Ends every open watch cleanly (the terminating chunk), as a watch
    /// whose time is up: the client watches again from where it was.
    pub fn end_watches(&self) {
        self.state.lock().unwrap().ended += 1;
        self.tick.send_modify(|t| *t += 1);
    }

    pub fn bump_epoch(&self) {
        let mut st = self.state.lock().unwrap();
        st.epoch += 1;
        drop(st);
        self.tick.send_modify(|t| *t += 1);
    }

    /// Apply watch events (as the cluster would) and send them to open
    /// watches together.
    pub fn push(&self, path: &str, events: Vec<Value>) {
        let mut st = self.state.lock().unwrap();
        for mut event in events {
            st.rv += 1;
            let rv = st.rv;
            event["object"]["metadata"]["resourceVersion"] = json!(rv.to_string());
            let res = st.resources.get_mut(path).expect("resource served");
            let key = key_of(&event["object"]);
            match event["type"].as_str().unwrap() {
                "ADDED" | "MODIFIED" => {
                    res.objects.insert(key, event["object"].clone());
                }
                "DELETED" => {
                    res.objects.remove(&key);
                }
                _ => {}
            }
            res.log.push((rv, event));
        }
        drop(st);
        self.tick.send_modify(|t| *t += 1);
    }

    /// Serves `objects` at `path` as they are, without watch events (the
    /// state a list finds): for a cluster too large for fixtures.
    pub fn serve_objects(
        &self,
        path: &str,
        list_kind: &str,
        api_version: &str,
        objects: impl IntoIterator<Item = Value>,
    ) {
        let objects = objects.into_iter().map(|o| (key_of(&o), o)).collect();
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        st.resources.insert(
            path.to_owned(),
            Resource {
                list_kind: list_kind.to_owned(),
                api_version: api_version.to_owned(),
                objects,
                log: Vec::new(),
            },
        );
    }

    /// Serves an empty collection at `path` that clients can write to:
    /// `POST` on it, and `GET`, `PUT` and `DELETE` on `path/NAME`, with
    /// their watch events. For a component that publishes objects or holds
    /// a Lease.
    pub fn serve_writable(&self, path: &str, list_kind: &str, api_version: &str) {
        self.serve_objects(path, list_kind, api_version, []);
    }

    /// Every successful write so far, as "METHOD PATH" (e.g. "PUT
    /// /apis/coordination.k8s.io/v1/namespaces/ns/leases/name"), in order.
    pub fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }

    /// The object named `namespace`/`name` stored in the collection `coll`.
    pub fn object(&self, coll: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        let key = (namespace.to_owned(), name.to_owned());
        st.resources.get(coll)?.objects.get(&key).cloned()
    }

    /// Every object stored in the collection `coll`, by namespace and name.
    pub fn objects(&self, coll: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.resources
            .get(coll)
            .map(|res| res.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forget the watch history, as etcd compaction does.
    pub fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv;
        for res in st.resources.values_mut() {
            res.log.clear();
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub async fn handle<S: Stream>(&self, mut stream: S) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let method = head.split_whitespace().next().unwrap_or("GET").to_owned();
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let Some(body) = read_body(&mut stream, buf).await? else {
            return Ok(());
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();

        let (mode, epoch) = {
            let mut st = self.state.lock().unwrap();
            st.requests.push(target.clone());
            (st.mode, st.epoch)
        };
        if mode == Mode::Error500 {
            let body = status_json(500, "InternalError", "etcdserver: request timed out");
            return respond(&mut stream, "500 Internal Server Error", &body).await;
        }
        if path == "/version" {
            let body = json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.1",
                "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828", "gitTreeState": "clean",
                "buildDate": "2025-05-15T08:19:08Z", "goVersion": "go1.24.2",
                "compiler": "gc", "platform": "linux/amd64"
            });
            return respond(&mut stream, "200 OK", &body.to_string()).await;
        }
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
            return self.access_review(stream, &body).await;
        }
        if let Some(body) = self.discovery(path) {
            return respond(&mut stream, "200 OK", &body.to_string()).await;
        }
        if let Some((status, body)) = self.object_request(&method, path, &body) {
            return respond(&mut stream, status, &body).await;
        }
        if params.get("watch") == Some(&"true") {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return self.watch(stream, path, from, epoch).await;
        }
        let body = {
            let st = self.state.lock().unwrap();
            match st.resources.get(path) {
                Some(res) => list_page(res, st.rv, &params),
                None => String::new(),
            }
        };
        if body.is_empty() {
            let body = status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
            return respond(&mut stream, "404 Not Found", &body).await;
        }
        respond(&mut stream, "200 OK", &body).await
    }

    /// `POST .../selfsubjectaccessreviews` (what `classifier check
    /// --kubernetes` asks): allowed exactly for the resources this server
    /// serves, whatever the verb.
    async fn access_review<S: Stream>(&self, mut stream: S, body: &[u8]) -> std::io::Result<()> {
        let mut review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let plural = review["spec"]["resourceAttributes"]["resource"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let allowed = self
            .state
            .lock()
            .unwrap()
            .resources
            .keys()
            .any(|p| p.ends_with(&format!("/{plural}")));
        review["status"] = json!({"allowed": allowed});
        respond(&mut stream, "201 Created", &review.to_string()).await
    }

    /// A request on one object of a served collection (`GET`, `PUT` or
    /// `DELETE` on `COLL/NAME`) or a create (`POST COLL`): the response's
    /// status line and body. `None` for anything else (lists and watches).
    fn object_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Option<(&'static str, String)> {
        let mut st = self.state.lock().unwrap();
        if st.resources.contains_key(path) {
            // The collection itself: a create, or a list or watch.
            if method != "POST" {
                return None;
            }
            let response = create(&mut st, path, body);
            return Some(self.written(st, method, path, response));
        }
        let (coll, name) = path.rsplit_once('/')?;
        if name.is_empty() || !st.resources.contains_key(coll) {
            return None;
        }
        let key = (namespace_of(coll), name.to_owned());
        let response = match method {
            "GET" => match st.resources[coll].objects.get(&key) {
                Some(obj) => ("200 OK", obj.to_string()),
                None => not_found(&key),
            },
            "PUT" => replace(&mut st, coll, key, body),
            "DELETE" => delete(&mut st, coll, key),
            _ => return None,
        };
        Some(self.written(st, method, path, response))
    }

    /// Records a successful write (a 2xx answer to anything but `GET`) and
    /// wakes the open watches to send its event.
    fn written(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        method: &str,
        path: &str,
        response: (&'static str, String),
    ) -> (&'static str, String) {
        if method == "GET" || !response.0.starts_with('2') {
            return response;
        }
        st.writes.push(format!("{method} {path}"));
        drop(st);
        self.tick.send_modify(|t| *t += 1);
        response
    }

    /// `GET /apis/GROUP/VERSION`: the APIResourceList of the served
    /// resources of that group version, `None` when there are none (404,
    /// as for a CRD that is not installed).
    fn discovery(&self, path: &str) -> Option<Value> {
        let group_version = path.strip_prefix("/apis/")?;
        if group_version.matches('/').count() != 1 {
            return None;
        }
        let st = self.state.lock().unwrap();
        let resources: Vec<Value> = st
            .resources
            .keys()
            .filter_map(|p| p.strip_prefix(&format!("{path}/")))
            .map(|plural| {
                json!({"name": plural, "singularName": "", "namespaced": true, "kind": "",
                       "verbs": ["get", "list", "watch"]})
            })
            .collect();
        (!resources.is_empty()).then(|| {
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": group_version, "resources": resources})
        })
    }

    pub async fn watch<S: Stream>(
        &self,
        mut stream: S,
        path: &str,
        mut from: u64,
        epoch: u64,
    ) -> std::io::Result<()> {
        if !self.state.lock().unwrap().resources.contains_key(path) {
            let body = status_json(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
            return respond(&mut stream, "404 Not Found", &body).await;
        }
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n\
                  Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            )
            .await?;
        let (compacted, ended) = {
            let st = self.state.lock().unwrap();
            (st.compacted, st.ended)
        };
        if from < compacted {
            // What the API server sends for a too old resourceVersion.
            let event = json!({"type": "ERROR", "object": serde_json::from_str::<Value>(&status_json(
                410,
                "Expired",
                &format!("too old resource version: {from} ({compacted})"),
            ))
            .unwrap()});
            let line = format!("{event}\n");
            let out = format!("{:x}\r\n{line}\r\n0\r\n\r\n", line.len());
            return stream.write_all(out.as_bytes()).await;
        }
        let mut tick = self.tick.subscribe();
        loop {
            let (pending, end): (Vec<(u64, Value)>, bool) = {
                let st = self.state.lock().unwrap();
                if st.epoch != epoch {
                    // Cut without the terminating chunk: the server went away.
                    return Ok(());
                }
                let pending = st.resources[path]
                    .log
                    .iter()
                    .filter(|(rv, _)| *rv > from)
                    .cloned()
                    .collect();
                (pending, st.ended != ended)
            };
            if end && pending.is_empty() {
                return stream.write_all(b"0\r\n\r\n").await;
            }
            let mut out = Vec::new();
            for (rv, event) in pending {
                let line = format!("{event}\n");
                out.extend_from_slice(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes());
                from = rv;
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
            }
            if tick.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}

/// A throwaway CA and a server certificate for `ip` signed by it: (the
/// CA's PEM, as `ca.crt` in a service-account volume, and the server's TLS
/// config).
pub fn tls_identity(ip: &str) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-kube-ca");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec![ip.to_owned(), "kubernetes.default.svc".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

pub fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(64).unwrap()
}

/// One page of a list, as the API server answers it: items without kind
/// and apiVersion for built-in kinds, the list's resourceVersion in its
/// metadata, at most `limit` items when asked, and a `continue` token (here
/// the index of the next item) while there are more.
fn list_page(res: &Resource, rv: u64, params: &BTreeMap<&str, &str>) -> String {
    let from: usize = params
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let items: Vec<&Value> = res.objects.values().skip(from).take(limit).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if from.saturating_add(items.len()) < res.objects.len() {
        metadata["continue"] = json!((from + items.len()).to_string());
    }
    // Written item by item: `json!` would copy every item into a new tree
    // first, most of a large page's cost.
    let mut body = json!({
        "kind": res.list_kind,
        "apiVersion": res.api_version,
        "metadata": metadata,
    })
    .to_string();
    body.pop(); // the closing brace
    body.push_str(",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&item.to_string());
    }
    body.push_str("]}");
    body
}

/// `POST COLL`: stores a new object with a resourceVersion, a uid and a
/// creationTimestamp, as the API server does; 409 when the name is taken.
fn create(st: &mut State, coll: &str, body: &[u8]) -> (&'static str, String) {
    let Some(mut obj) = parse_object(body) else {
        return bad_request("the body is not a JSON object");
    };
    if obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .is_empty()
    {
        let namespace = namespace_of(coll);
        if !namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
    }
    let key = key_of(&obj);
    if key.1.is_empty() {
        return bad_request("name or generateName is required");
    }
    if st.resources[coll].objects.contains_key(&key) {
        let message = format!("\"{}\" already exists", key.1);
        return ("409 Conflict", status_json(409, "AlreadyExists", &message));
    }
    st.rv += 1;
    let rv = st.rv;
    let meta = &mut obj["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    meta["uid"] = json!(format!("uid-{rv}"));
    if meta["creationTimestamp"].as_str().is_none() {
        meta["creationTimestamp"] = json!("2026-12-07T00:00:00Z");
    }
    store(st, coll, key, "ADDED", obj.clone());
    ("201 Created", obj.to_string())
}

/// `PUT COLL/NAME`: replaces the object, keeping its uid and
/// creationTimestamp; 409 when the body carries a resourceVersion other
/// than the stored one (optimistic concurrency), and 422 when it carries
/// none: the API server refuses an unconditional update of a custom
/// object (its strategy does not allow one), so a writer must track
/// versions.
fn replace(
    st: &mut State,
    coll: &str,
    key: (String, String),
    body: &[u8],
) -> (&'static str, String) {
    let Some(stored) = st.resources[coll].objects.get(&key) else {
        return not_found(&key);
    };
    let Some(mut obj) = parse_object(body) else {
        return bad_request("the body is not a JSON object");
    };
    if obj["metadata"]["name"].as_str() != Some(key.1.as_str()) {
        let message = "the name of the object does not match the name on the URL";
        return bad_request(message);
    }
    let sent_rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if sent_rv.is_empty() {
        let message =
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update";
        return (
            "422 Unprocessable Entity",
            status_json(422, "Invalid", message),
        );
    }
    if Some(sent_rv) != stored["metadata"]["resourceVersion"].as_str() {
        let message = "the object has been modified; please apply your changes to the latest version and try again";
        return ("409 Conflict", status_json(409, "Conflict", message));
    }
    let (uid, created) = (
        stored["metadata"]["uid"].clone(),
        stored["metadata"]["creationTimestamp"].clone(),
    );
    st.rv += 1;
    let meta = &mut obj["metadata"];
    meta["resourceVersion"] = json!(st.rv.to_string());
    meta["uid"] = uid;
    meta["creationTimestamp"] = created;
    if !key.0.is_empty() {
        meta["namespace"] = json!(key.0);
    }
    store(st, coll, key, "MODIFIED", obj.clone());
    ("200 OK", obj.to_string())
}

/// `DELETE COLL/NAME`: removes the object (no finalizers, no grace period)
/// and answers with it as last seen.
fn delete(st: &mut State, coll: &str, key: (String, String)) -> (&'static str, String) {
    let Some(mut obj) = st.resources.get_mut(coll).unwrap().objects.remove(&key) else {
        return not_found(&key);
    };
    st.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    store(st, coll, key, "DELETED", obj.clone());
    ("200 OK", obj.to_string())
}

/// Applies a write at the current resourceVersion: the stored object
/// (none after a delete) and its watch event.
fn store(st: &mut State, coll: &str, key: (String, String), kind: &str, obj: Value) {
    let rv = st.rv;
    let res = st.resources.get_mut(coll).unwrap();
    if kind != "DELETED" {
        res.objects.insert(key, obj.clone());
    }
    res.log.push((rv, json!({"type": kind, "object": obj})));
}

/// The namespace a collection path is in: NS in `.../namespaces/NS/PLURAL`,
/// empty for a cluster-wide collection.
fn namespace_of(coll: &str) -> String {
    coll.split_once("/namespaces/")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(ns, _)| ns.to_owned())
        .unwrap_or_default()
}

fn parse_object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|v| v.is_object() && v["metadata"].is_object())
}

fn not_found(key: &(String, String)) -> (&'static str, String) {
    let message = format!("\"{}\" not found", key.1);
    ("404 Not Found", status_json(404, "NotFound", &message))
}

fn bad_request(message: &str) -> (&'static str, String) {
    ("400 Bad Request", status_json(400, "BadRequest", message))
}

/// Reads the request body that follows the head in `buf`, by its
/// Content-Length (none means no body; a chunked body is not decoded and
/// reads as empty, but clients send JSON bodies with a length). `None` when
/// the client hangs up first.
async fn read_body<S: Stream>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    let body_at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while buf.len() < body_at + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(body_at + len);
    Ok(Some(buf.split_off(body_at)))
}

pub fn key_of(obj: &Value) -> (String, String) {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().unwrap_or("").to_owned(),
    )
}

pub fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
    .to_string()
}

pub async fn respond<S: Stream>(stream: &mut S, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------
