//! The acknowledged-write audit: writers that are part of the load, each write a unique key
//! (`{n}`) with a unique value; once the service has restarted (or upgraded, or rolled out),
//! every write it acknowledged is read back and compared. Over HTTP (`--write`, `--read`:
//! acknowledged = 2xx) or gRPC (`--write-call`, `--read-call` with JSON templates:
//! acknowledged = OK).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Method;

use crate::grpc_load;
use crate::load::{self, Attempt, Request, Shared, Slot, Target};
use crate::report::{AuditReport, Kind, Outcome};
use crate::schema::{self, Call};
use crate::tls::Trust;

/// Reads at once during the read-back.
const READERS: usize = 8;
/// Tries per read (a read that gets no answer is tried again).
const READ_TRIES: u32 = 3;
/// Reads in a row that could not be read at all before the read-back gives up on the rest
/// (a restarted instance that hangs every read must not hold the drill for hours).
const UNREADABLE_STREAK: u32 = 16;
/// Examples kept of each kind of discrepancy.
const SAMPLES: usize = 10;

/// `METHOD URL` with `{n}` in the URL.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    method: Method,
    url: String,
    trust: Trust,
}

impl Template {
    /// Parses `METHOD URL` (or a bare URL, which takes `default`), checking that `{n}` is in
    /// the URL and that it makes a usable URL.
    pub(crate) fn parse(
        text: &str,
        flag: &str,
        default: Method,
        trust: &Trust,
    ) -> Result<Template, String> {
        let text = text.trim();
        let (method, url) = match text.split_once(char::is_whitespace) {
            Some((method, url)) => (
                method
                    .parse::<Method>()
                    .map_err(|e| format!("{flag} `{text}`: the method: {e}"))?,
                url.trim(),
            ),
            None => (default, text),
        };
        if !url.contains("{n}") {
            return Err(format!(
                "{flag} `{text}`: the URL needs the placeholder {{n}} (each write its own key)"
            ));
        }
        let template = Template {
            method,
            url: url.to_owned(),
            trust: trust.clone(),
        };
        template
            .request(0, Bytes::new())
            .map_err(|e| format!("{flag} {e}"))?;
        Ok(template)
    }

    fn request(&self, n: u64, body: Bytes) -> Result<Request, String> {
        Ok(Request {
            method: self.method.clone(),
            target: Target::parse(&self.url.replace("{n}", &n.to_string()), &self.trust)?,
            body,
        })
    }

    /// The authority the URL names (to wait for its readiness).
    pub(crate) fn authority(&self) -> Result<String, String> {
        Ok(self.request(0, Bytes::new())?.target.authority)
    }
}

/// A write the service acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Acked {
    n: u64,
    value: Bytes,
}

/// A gRPC call with a JSON template for its request: `{n}` the key, `{value}` the value.
#[derive(Debug, Clone)]
pub(crate) struct CallTemplate {
    call: Call,
    json: String,
}

impl CallTemplate {
    /// Checks that `json` has the placeholders `needs` and makes a valid request of `call`.
    pub(crate) fn new(call: Call, json: &str, flag: &str, needs: &[&str]) -> Result<Self, String> {
        for placeholder in needs {
            if !json.contains(placeholder) {
                return Err(format!(
                    "{flag} `{json}`: the JSON needs the placeholder {placeholder}"
                ));
            }
        }
        let template = CallTemplate {
            call,
            json: json.to_owned(),
        };
        template
            .request(0, "value")
            .map_err(|e| format!("{flag}: {e}"))?;
        Ok(template)
    }

    fn request(&self, n: u64, value: &str) -> Result<Bytes, String> {
        // The value goes into a JSON string: escaped as JSON escapes it, without the quotes.
        let quoted = serde_json::to_string(value).map_err(|e| e.to_string())?;
        let escaped = quoted.get(1..quoted.len() - 1).unwrap_or_default();
        let json = self
            .json
            .replace("{n}", &n.to_string())
            .replace("{value}", escaped);
        let message = schema::from_json(&self.call.input, &json)?;
        Ok(prost::Message::encode_to_vec(&message).into())
    }
}

/// Where the writes go and are read from.
#[derive(Debug)]
pub(crate) enum Store {
    /// HTTP requests.
    Http { write: Template, read: Template },
    /// gRPC calls on the `--grpc` server.
    Grpc {
        authority: String,
        write: Box<CallTemplate>,
        read: Box<CallTemplate>,
    },
}

/// What the writers share.
#[derive(Debug)]
pub(crate) struct Writes {
    pub(crate) store: Store,
    /// The next key.
    next: AtomicU64,
    /// This drill's mark in every value, so that a value left by an earlier drill under the
    /// same key is never taken for this one's.
    run: String,
    pub(crate) acked: Mutex<Vec<Acked>>,
    pub(crate) sent: AtomicU64,
}

impl Writes {
    pub(crate) fn new(store: Store) -> Writes {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Writes {
            store,
            next: AtomicU64::new(1),
            run: format!("{}-{nanos}", std::process::id()),
            acked: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        }
    }

    /// The next write's key and value.
    fn next(&self) -> (u64, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n, format!("lameduck-drill {} write {n}", self.run))
    }

    fn acknowledged(&self, n: u64, value: Bytes) {
        if let Ok(mut acked) = self.acked.lock() {
            acked.push(Acked { n, value });
        }
    }

    /// The address the writes go to (to wait for its readiness).
    pub(crate) fn authority(&self) -> Result<String, String> {
        match &self.store {
            Store::Http { write, .. } => write.authority(),
            Store::Grpc { authority, .. } => Ok(authority.clone()),
        }
    }
}

/// One writer: writes in a loop on one connection until the drill stops the load.
pub(crate) async fn writer(shared: Arc<Shared>, writes: Arc<Writes>, worker: u16) {
    match &writes.store {
        Store::Http { write, .. } => http_writer(&shared, &writes, write, worker).await,
        Store::Grpc {
            authority, write, ..
        } => grpc_writer(&shared, &writes, authority, write, worker).await,
    }
}

async fn http_writer(shared: &Shared, writes: &Writes, template: &Template, worker: u16) {
    let mut slot = Slot::default();
    let mut pending: Option<(u64, Request)> = None;
    while !shared.stop.load(Ordering::Acquire) {
        let (n, request) = match pending.take() {
            Some(again) => again,
            None => {
                let (n, value) = writes.next();
                match template.request(n, Bytes::from(value)) {
                    Ok(request) => (n, request),
                    // Checked at the start: cannot happen; stop rather than spin.
                    Err(_) => break,
                }
            }
        };
        let Some(sent) = slot.send(shared, Kind::Write, worker, &request).await else {
            // Not sent: the same write again, on a new connection.
            pending = Some((n, request));
            continue;
        };
        if sent.record.outcome != Outcome::Refused {
            writes.sent.fetch_add(1, Ordering::Relaxed);
        }
        if sent.answered.is_some_and(|s| (200..300).contains(&s)) {
            writes.acknowledged(n, request.body.clone());
        }
        let refused = sent.record.outcome == Outcome::Refused;
        shared.record(sent.record);
        if refused {
            tokio::time::sleep(load::REFUSED_PAUSE).await;
        }
    }
}

async fn grpc_writer(
    shared: &Shared,
    writes: &Writes,
    authority: &str,
    template: &CallTemplate,
    worker: u16,
) {
    let mut client = None;
    while !shared.stop.load(Ordering::Acquire) {
        let (n, value) = writes.next();
        let Ok(request) = template.request(n, &value) else {
            // Checked at the start: cannot happen; stop rather than spin.
            break;
        };
        let record = grpc_load::timed_call(
            shared,
            &mut client,
            authority,
            &template.call,
            request,
            Kind::Write,
            worker,
        )
        .await;
        if record.outcome == Outcome::Ok {
            writes.acknowledged(n, Bytes::from(value));
        }
        if record.outcome != Outcome::Refused {
            writes.sent.fetch_add(1, Ordering::Relaxed);
        }
        let refused = record.outcome == Outcome::Refused;
        shared.record(record);
        if refused {
            tokio::time::sleep(load::REFUSED_PAUSE).await;
        }
    }
}

/// What one read found.
enum Found {
    Same,
    Lost(u16),
    Wrong(String),
    Unreadable(String),
}

/// Reads every acknowledged write back and compares it; `began` is the drill's start.
pub(crate) async fn read_back(
    writes: &Arc<Writes>,
    http2: bool,
    timeout: Duration,
    began: Instant,
) -> AuditReport {
    let acked = writes.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut report = AuditReport {
        writes: writes.sent.load(Ordering::Relaxed),
        acknowledged: acked.len() as u64,
        read_at_ms: began.elapsed().as_secs_f64() * 1000.0,
        ..AuditReport::default()
    };
    let queue = Arc::new(Mutex::new(VecDeque::from(acked)));
    let streak = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let writes = Arc::clone(writes);
            let streak = Arc::clone(&streak);
            tokio::spawn(async move {
                let mut found = Vec::new();
                let mut conn = None;
                let mut client = None;
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(write) = next else { break };
                    if streak.load(Ordering::Relaxed) >= UNREADABLE_STREAK {
                        let why = format!("not tried: {UNREADABLE_STREAK} reads in a row failed");
                        found.push((write.n, Found::Unreadable(why)));
                        continue;
                    }
                    let result = match &writes.store {
                        Store::Http { read, .. } => {
                            read_one(read, &write, &mut conn, http2, timeout).await
                        }
                        Store::Grpc {
                            authority, read, ..
                        } => read_call(authority, read, &write, &mut client, timeout).await,
                    };
                    if matches!(result, Found::Unreadable(_)) {
                        streak.fetch_add(1, Ordering::Relaxed);
                    } else {
                        streak.store(0, Ordering::Relaxed);
                    }
                    found.push((write.n, result));
                }
                found
            })
        })
        .collect();
    let mut results = Vec::new();
    for reader in readers {
        if let Ok(mut found) = reader.await {
            results.append(&mut found);
        }
    }
    results.sort_by_key(|(n, _)| *n);
    for (n, result) in results {
        let sample = match result {
            Found::Same => {
                report.found += 1;
                None
            }
            Found::Lost(status) => {
                report.lost += 1;
                Some(format!("write {n}: lost (the read answered {status})"))
            }
            Found::Wrong(value) => {
                report.wrong += 1;
                Some(format!("write {n}: read back as {value:?}"))
            }
            Found::Unreadable(error) => {
                report.unreadable += 1;
                Some(format!("write {n}: could not be read: {error}"))
            }
        };
        if let Some(sample) = sample
            && report.samples.len() < SAMPLES
        {
            report.samples.push(sample);
        }
    }
    report
}

async fn read_one(
    read: &Template,
    write: &Acked,
    conn: &mut Option<load::Conn>,
    http2: bool,
    timeout: Duration,
) -> Found {
    let request = match read.request(write.n, Bytes::new()) {
        Ok(request) => request,
        Err(e) => return Found::Unreadable(e),
    };
    let mut last = String::new();
    for _ in 0..READ_TRIES {
        if conn.as_ref().is_none_or(load::Conn::is_closed) {
            *conn = load::connect(&request.target, http2).await;
        }
        let Some(c) = conn.as_mut() else {
            last = format!("{} refused the connection", request.target.authority);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match load::send(c, &request, timeout).await {
            Attempt::Answered(status, body) if (200..300).contains(&status) => {
                let same =
                    body == write.value || body.trim_ascii_end() == write.value.trim_ascii_end();
                return if same {
                    Found::Same
                } else {
                    Found::Wrong(String::from_utf8_lossy(&body).chars().take(80).collect())
                };
            }
            Attempt::Answered(status @ (404 | 410), _) => return Found::Lost(status),
            Attempt::Answered(status, _) => {
                *conn = None;
                last = format!("status {status}");
            }
            Attempt::NotSent => {
                *conn = None;
                last = "not sent: the server closed the connection".to_owned();
            }
            Attempt::Lost(e) | Attempt::TimedOut(e) | Attempt::Truncated(_, e) => {
                *conn = None;
                last = e;
            }
        }
    }
    Found::Unreadable(last)
}

async fn read_call(
    authority: &str,
    read: &CallTemplate,
    write: &Acked,
    client: &mut Option<grpc_load::Client>,
    timeout: Duration,
) -> Found {
    let value = String::from_utf8_lossy(&write.value).into_owned();
    let request = match read.request(write.n, &value) {
        Ok(request) => request,
        Err(e) => return Found::Unreadable(e),
    };
    let mut last = String::new();
    for _ in 0..READ_TRIES {
        let (attempt, _) =
            grpc_load::call_retrying(client, authority, &read.call, request.clone(), timeout).await;
        match attempt {
            grpc_load::Attempt::Ok(answer) => {
                let answer = answer.unwrap_or_default();
                return match schema::to_json(&read.call.output, &answer) {
                    Ok(json) if holds(&json, &value) => Found::Same,
                    Ok(json) => Found::Wrong(json.chars().take(80).collect()),
                    Err(e) => Found::Unreadable(e),
                };
            }
            grpc_load::Attempt::Failed(Some("NOT_FOUND"), _) => return Found::Lost(404),
            grpc_load::Attempt::Failed(_, e) => {
                *client = None;
                last = e;
            }
            grpc_load::Attempt::NotSent => {
                *client = None;
                last = format!("{authority} refused the call");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Found::Unreadable(last)
}

/// Whether the JSON `json` has the string `value` anywhere in it.
fn holds(json: &str, value: &str) -> bool {
    fn walk(v: &serde_json::Value, value: &str) -> bool {
        match v {
            serde_json::Value::String(s) => s == value,
            serde_json::Value::Array(items) => items.iter().any(|i| walk(i, value)),
            serde_json::Value::Object(fields) => fields.values().any(|f| walk(f, value)),
            _ => false,
        }
    }
    serde_json::from_str(json).is_ok_and(|v: serde_json::Value| walk(&v, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_a_method_and_need_the_placeholder() {
        let t = Template::parse(
            "PUT http://127.0.0.1:8080/kv/{n}",
            "--write",
            Method::PUT,
            &Trust::default(),
        )
        .unwrap();
        assert_eq!(t.method, Method::PUT);
        let r = t.request(42, Bytes::new()).unwrap();
        assert_eq!(r.target.uri.path(), "/kv/42");
        assert_eq!(t.authority().unwrap(), "127.0.0.1:8080");
        let bare = Template::parse(
            "http://h:1/kv/{n}",
            "--read",
            Method::GET,
            &Trust::default(),
        )
        .unwrap();
        assert_eq!(bare.method, Method::GET);
        let e = Template::parse(
            "PUT http://h:1/kv",
            "--write",
            Method::PUT,
            &Trust::default(),
        )
        .unwrap_err();
        assert!(e.contains("placeholder {n}"), "{e}");
        let e = Template::parse(
            "PUT https://h/kv/{n}",
            "--write",
            Method::PUT,
            &Trust::default(),
        )
        .unwrap_err();
        assert!(e.contains("needs --cacert"), "{e}");
        let e = Template::parse(
            "P(T http://h/{n}",
            "--write",
            Method::PUT,
            &Trust::default(),
        )
        .unwrap_err();
        assert!(e.contains("the method"), "{e}");
    }

    #[test]
    fn a_grpc_answer_holds_the_value_only_as_a_whole_string() {
        let value = "lameduck-drill 1-2 write 7";
        assert!(holds(r#"{"value": "lameduck-drill 1-2 write 7"}"#, value));
        assert!(holds(
            r#"{"item": {"values": ["x", "lameduck-drill 1-2 write 7"]}}"#,
            value
        ));
        assert!(!holds(r#"{"value": "lameduck-drill 1-2 write 70"}"#, value));
        assert!(!holds(r#"{"value": "lameduck-drill 1-2 write"}"#, value));
        assert!(!holds(r#"{}"#, value));
        assert!(!holds("not json", value));
    }
}
