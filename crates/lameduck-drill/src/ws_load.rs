//! The WebSocket load (`--ws`): long-lived clients, each on its own connection, that connect
//! before the signal (never after it), count the messages they receive (and send one every
//! `--ws-send-every`), and note how their socket ended: the server's Close frame (its code, when
//! it came) and whether the connection then ended cleanly, or a cut without one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::load::{self, CONNECT_TIMEOUT, Shared, Target};
use crate::report::WebSocketReport;
use crate::tls::Trust;

/// The close codes of a graceful shutdown: 1001 "going away", 1012 "service restart", and
/// 1000 "normal closure".
pub(crate) const GOOD_CODES: [u16; 3] = [1000, 1001, 1012];

/// How often a client between messages looks whether the drill is over.
const STOP_POLL: Duration = Duration::from_millis(20);

/// How long a client waits before it tries to connect again (before the signal).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long a client still open when the drill ends may take to close its side.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long the load's stop waits for a client to finish (it sees the stop within
/// [`STOP_POLL`], then takes [`CLOSE_GRACE`] at most).
pub(crate) const STOP_WITHIN: Duration = Duration::from_secs(3);

/// A `--ws` URL.
#[derive(Debug, Clone)]
pub(crate) struct WsTarget {
    /// As given: the handshake's request.
    pub(crate) url: String,
    /// Where to connect, and how (TLS for `wss://`).
    pub(crate) target: Target,
}

impl WsTarget {
    /// A `ws://` URL, or a `wss://` one if `trust` can (`--cacert`, `--insecure`).
    pub(crate) fn parse(url: &str, trust: &Trust) -> Result<WsTarget, String> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let http = match scheme.to_ascii_lowercase().as_str() {
            "ws" => format!("http://{rest}"),
            "wss" if trust.usable() => format!("https://{rest}"),
            "wss" => {
                return Err(format!(
                    "`{url}`: a wss:// URL needs --cacert PEM (or --insecure)"
                ));
            }
            _ => return Err(format!("`{url}`: --ws takes ws:// and wss:// URLs")),
        };
        let target = Target::parse(&http, trust).map_err(|e| e.replace(&http, url))?;
        Ok(WsTarget {
            url: url.to_owned(),
            target,
        })
    }
}

/// How a client's socket ended, as it saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum End {
    /// It never connected (before the signal): why.
    Refused(String),
    /// The connection ended cleanly (after a Close frame, the handshake done).
    Clean,
    /// The connection was cut: why (no Close frame before it, or a reset after one).
    Cut(String),
    /// Still open when the drill ended.
    Open,
}

/// The server's Close frame, as a client received it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Close {
    /// Its code (1005, "no status received", for a Close without one).
    pub(crate) code: u16,
    /// Its reason.
    pub(crate) reason: String,
    /// When it came, milliseconds since the drill started.
    pub(crate) at_ms: f64,
}

/// One client's life.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientEnd {
    /// When the handshake finished.
    pub(crate) connected_ms: Option<f64>,
    /// Text and binary messages received.
    pub(crate) messages: u64,
    /// Text messages sent (`--ws-send-every`).
    pub(crate) sent: u64,
    /// The server's Close frame, if one came.
    pub(crate) close: Option<Close>,
    /// How it ended.
    pub(crate) end: End,
    /// When.
    pub(crate) end_ms: f64,
}

/// How a client did, for the verdict.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Closed with a good code after the signal (and before the exit), then a clean end.
    Ok,
    /// Never connected before the signal.
    Refused,
    /// Anything else: why.
    Failed(String),
}

/// Judges `end`, the signal sent at `signal_ms`, the process gone at `exit_ms` (if it exited).
pub(crate) fn classify(end: &ClientEnd, signal_ms: f64, exit_ms: Option<f64>) -> Verdict {
    if let End::Refused(_) = end.end {
        return Verdict::Refused;
    }
    let after = |at: f64| at - signal_ms;
    let Some(close) = &end.close else {
        return Verdict::Failed(match &end.end {
            End::Open => "still open when the drill ended: the server never closed it".to_owned(),
            End::Cut(why) | End::Refused(why) if end.end_ms < signal_ms => format!(
                "cut before the signal ({:.1} ms before it), without a Close frame (a client \
                 sees 1006): {why}",
                -after(end.end_ms)
            ),
            End::Cut(why) | End::Refused(why) => format!(
                "cut {:.1} ms after the signal without a Close frame (a client sees 1006): {why}",
                after(end.end_ms)
            ),
            End::Clean => "ended without a Close frame (a client sees 1006)".to_owned(),
        });
    };
    let code = if close.reason.is_empty() {
        close.code.to_string()
    } else {
        format!("{} \"{}\"", close.code, close.reason)
    };
    if close.at_ms < signal_ms {
        return Verdict::Failed(format!(
            "closed {:.1} ms before the signal (code {code}): an unexpected close",
            -after(close.at_ms)
        ));
    }
    if !GOOD_CODES.contains(&close.code) {
        return Verdict::Failed(format!(
            "closed with code {code}, not 1001 (going away), 1012 (service restart) or 1000"
        ));
    }
    if let Some(exit_ms) = exit_ms
        && close.at_ms > exit_ms
    {
        return Verdict::Failed(format!(
            "the Close frame (code {code}) came {:.1} ms after the exit",
            close.at_ms - exit_ms
        ));
    }
    match &end.end {
        End::Clean => Verdict::Ok,
        End::Open => Verdict::Failed(format!(
            "still open when the drill ended, after the Close frame (code {code})"
        )),
        End::Cut(why) | End::Refused(why) => Verdict::Failed(format!(
            "the connection was not closed cleanly after the Close frame (code {code}): {why}"
        )),
    }
}

/// What went wrong with a socket, in words.
fn describe(error: &WsError) -> String {
    match error {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "the connection ended without a closing handshake".to_owned()
        }
        WsError::Io(e) => format!("I/O error: {e}"),
        other => other.to_string(),
    }
}

/// One client, until its socket ends or the drill stops the load (then it closes its side,
/// within [`CLOSE_GRACE`]).
pub(crate) async fn client(
    shared: Arc<Shared>,
    target: Arc<WsTarget>,
    id: u16,
    send_every: Option<Duration>,
) -> ClientEnd {
    let mut last_error = "not attempted".to_owned();
    // New connections only before the signal (and while the load runs).
    while !shared.signalled() && !shared.stop.load(Ordering::Acquire) {
        let Some(tcp) = load::tcp(&target.target.authority).await else {
            last_error = format!("no connection to {}", target.target.authority);
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let held = match &target.target.tls {
            None => match handshake(&target.url, tcp).await {
                Ok(ws) => Ok(hold(ws, &shared, id, send_every).await),
                Err(e) => Err(e),
            },
            Some(trust) => match trust.connect_http1(&target.target.host, tcp).await {
                Ok(tls) => match handshake(&target.url, tls).await {
                    Ok(ws) => Ok(hold(ws, &shared, id, send_every).await),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        match held {
            Ok(end) => return end,
            Err(e) => {
                last_error = e;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    ClientEnd {
        connected_ms: None,
        messages: 0,
        sent: 0,
        close: None,
        end: End::Refused(last_error),
        end_ms: shared.ms(Instant::now()),
    }
}

/// The WebSocket handshake on `stream`, within [`CONNECT_TIMEOUT`].
async fn handshake<S>(url: &str, stream: S) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => {
            Err(format!("the upgrade was answered {}", response.status()))
        }
        Ok(Err(e)) => Err(format!("handshake: {}", describe(&e))),
        Err(_) => Err(format!("handshake: timed out after {CONNECT_TIMEOUT:?}")),
    }
}

/// A connected client's life: reads (and sends) until the socket ends or the drill stops.
async fn hold<S>(
    mut ws: WebSocketStream<S>,
    shared: &Shared,
    id: u16,
    send_every: Option<Duration>,
) -> ClientEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut life = ClientEnd {
        connected_ms: Some(shared.ms(Instant::now())),
        messages: 0,
        sent: 0,
        close: None,
        end: End::Open,
        end_ms: 0.0,
    };
    // Without `--ws-send-every`, the ticker never fires (its branch is disabled anyway).
    let period = send_every.unwrap_or(Duration::from_secs(86_400));
    let mut sender = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    sender.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(STOP_POLL);
    loop {
        tokio::select! {
            next = ws.next() => match next {
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite answers with our own Close on the next read.
                    life.close = Some(Close {
                        code: frame.as_ref().map_or(1005, |f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                        at_ms: shared.ms(Instant::now()),
                    });
                }
                Some(Ok(Message::Text(_) | Message::Binary(_))) => life.messages += 1,
                Some(Ok(_)) => {}
                None if life.close.is_some() => {
                    life.end = End::Clean;
                    break;
                }
                None => {
                    life.end = End::Cut("the connection ended without a Close frame".to_owned());
                    break;
                }
                Some(Err(WsError::Io(e)))
                    if life.close.is_some() && e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    // The closing handshake is done; a TLS stream closed without close_notify
                    // after it loses nothing.
                    life.end = End::Clean;
                    break;
                }
                Some(Err(e)) => {
                    life.end = End::Cut(describe(&e));
                    break;
                }
            },
            _ = sender.tick(), if send_every.is_some() && life.close.is_none() => {
                let text = format!("drill {id} {}", life.sent);
                if ws.send(Message::text(text)).await.is_ok() {
                    life.sent += 1;
                }
            }
            _ = watch.tick() => {
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
            }
        }
    }
    life.end_ms = shared.ms(Instant::now());
    if life.end == End::Open {
        // The drill is over: close our side, politely and briefly.
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
    }
    life
}

/// The report of one `--ws` URL's clients (`ends`), with the signal at `signal_ms` and the
/// exit at `exit_ms`.
pub(crate) fn report(
    target: &WsTarget,
    ends: &[ClientEnd],
    signal_ms: f64,
    exit_ms: Option<f64>,
) -> WebSocketReport {
    let mut report = WebSocketReport {
        url: target.url.clone(),
        clients: ends.len() as u64,
        ..WebSocketReport::default()
    };
    let mut close_times = Vec::new();
    let mut codes = BTreeMap::new();
    for (i, end) in ends.iter().enumerate() {
        report.connected += u64::from(end.connected_ms.is_some());
        report.messages_received += end.messages;
        report.messages_sent += end.sent;
        if let Some(close) = &end.close {
            *codes.entry(close.code.to_string()).or_insert(0) += 1;
            report.closes_at_ms.push(close.at_ms);
            if close.at_ms >= signal_ms {
                close_times.push(close.at_ms - signal_ms);
            }
        }
        match classify(end, signal_ms, exit_ms) {
            Verdict::Ok => report.ok += 1,
            Verdict::Refused => {
                report.refused += 1;
                if report.first_refusal.is_none()
                    && let End::Refused(why) = &end.end
                {
                    report.first_refusal = Some(why.clone());
                }
            }
            Verdict::Failed(why) => {
                report.failed += 1;
                if report.failures.len() < 10 {
                    report.failures.push(format!("client {i}: {why}"));
                }
            }
        }
    }
    report.close_codes = codes;
    report.closes_at_ms.sort_by(f64::total_cmp);
    close_times.sort_by(f64::total_cmp);
    report.close_after_signal_median_ms = median(&close_times);
    report.close_after_signal_max_ms = close_times.last().copied();
    report
}

/// The median of sorted `values`.
fn median(values: &[f64]) -> Option<f64> {
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Why a URL's WebSockets fail the drill, if they do.
pub(crate) fn reasons(report: &WebSocketReport) -> Vec<String> {
    let mut reasons = Vec::new();
    if report.failed > 0 {
        let first = report
            .failures
            .first()
            .map(|f| format!(" (first: {f})"))
            .unwrap_or_default();
        reasons.push(format!(
            "{} of {} WebSocket client(s) of {} did not end with a Close frame after the \
             signal{first}",
            report.failed, report.clients, report.url
        ));
    }
    if report.connected == 0 {
        reasons.push(format!(
            "no WebSocket client of {} connected before the signal ({})",
            report.url,
            report.first_refusal.as_deref().unwrap_or("no attempt")
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(close: Option<(u16, f64)>, end: End, end_ms: f64) -> ClientEnd {
        ClientEnd {
            connected_ms: Some(10.0),
            messages: 5,
            sent: 0,
            close: close.map(|(code, at_ms)| Close {
                code,
                reason: String::new(),
                at_ms,
            }),
            end,
            end_ms,
        }
    }

    const SIGNAL: f64 = 1000.0;
    const EXIT: Option<f64> = Some(1500.0);

    #[test]
    fn a_close_with_a_good_code_after_the_signal_then_a_clean_end_is_ok() {
        for code in GOOD_CODES {
            let e = end(Some((code, 1100.0)), End::Clean, 1101.0);
            assert_eq!(classify(&e, SIGNAL, EXIT), Verdict::Ok, "{code}");
        }
    }

    #[test]
    fn a_cut_another_code_an_early_or_late_close_fail() {
        let failed = |e: ClientEnd| match classify(&e, SIGNAL, EXIT) {
            Verdict::Failed(why) => why,
            other => panic!("{other:?}"),
        };
        let cut = End::Cut("the connection ended without a closing handshake".into());
        assert!(failed(end(None, cut.clone(), 1200.0)).contains("1006"));
        assert!(failed(end(None, cut.clone(), 500.0)).contains("before the signal"));
        assert!(failed(end(Some((1011, 1100.0)), End::Clean, 1101.0)).contains("code 1011"));
        assert!(failed(end(Some((1001, 900.0)), End::Clean, 901.0)).contains("unexpected close"));
        assert!(failed(end(Some((1001, 1600.0)), End::Clean, 1601.0)).contains("after the exit"));
        assert!(failed(end(Some((1001, 1100.0)), cut, 1101.0)).contains("not closed cleanly"));
        assert!(failed(end(None, End::Open, 2000.0)).contains("never closed"));
        let refused = ClientEnd {
            connected_ms: None,
            ..end(None, End::Refused("no connection".into()), 0.0)
        };
        assert_eq!(classify(&refused, SIGNAL, EXIT), Verdict::Refused);
    }

    #[test]
    fn the_report_counts_codes_and_times_and_fails_on_a_cut() {
        let target = WsTarget::parse("ws://127.0.0.1:9/ws", &Trust::default()).unwrap();
        let ends = [
            end(Some((1001, 1010.0)), End::Clean, 1011.0),
            end(Some((1001, 1030.0)), End::Clean, 1031.0),
            end(None, End::Cut("reset".into()), 1040.0),
        ];
        let r = report(&target, &ends, SIGNAL, EXIT);
        assert_eq!((r.clients, r.ok, r.failed, r.refused), (3, 2, 1, 0));
        assert_eq!(r.close_codes.get("1001"), Some(&2));
        assert_eq!(r.messages_received, 15);
        assert_eq!(r.close_after_signal_median_ms, Some(20.0));
        assert_eq!(r.close_after_signal_max_ms, Some(30.0));
        let why = reasons(&r);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("1 of 3 WebSocket client(s)"), "{why:?}");
    }

    #[test]
    fn only_ws_and_wss_urls_and_wss_needs_trust() {
        let none = Trust::default();
        let t = WsTarget::parse("ws://localhost/ticks?interval_ms=5", &none).unwrap();
        assert_eq!(t.target.authority, "localhost:80");
        assert!(t.target.tls.is_none());
        let e = WsTarget::parse("wss://localhost/", &none).unwrap_err();
        assert!(e.contains("--cacert"), "{e}");
        let e = WsTarget::parse("http://localhost/", &none).unwrap_err();
        assert!(e.contains("ws://"), "{e}");
    }
}
