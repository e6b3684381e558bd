//! `--metrics-url`: the service's own view of its shutdown. From readiness until the process
//! exits, a GET of the URL every `--metrics-interval` on a keep-alive connection of its own (a
//! new one after an error), its Prometheus text read for the lameduck series: `lameduck_ready`,
//! `lameduck_state{state}`, `lameduck_lame_duck`, `lameduck_in_flight{service}` and
//! `lameduck_connections{service}`. Scrapes that fail are counted, never a failure of the
//! drill: after the signal they are expected (the process, and its admin listener, go away).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::exposition::{self, Sample};
use crate::load::{self, Attempt, Conn, Request, Target};
use crate::report::{MetricsReport, MetricsSample};
use crate::run::ms;

/// How long one scrape may take, its connection included.
pub(crate) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The scrapes under way; dropping it stops them.
#[derive(Debug)]
pub(crate) struct Scraper {
    url: String,
    interval: Duration,
    stop: watch::Sender<bool>,
    task: JoinHandle<Scraped>,
}

/// What the scrapes brought, before the signal's time is known.
#[derive(Debug, Default)]
pub(crate) struct Scraped {
    /// Every successful scrape's values, in time order.
    pub(crate) samples: Vec<MetricsSample>,
    /// When each failed scrape was sent, milliseconds since the drill started.
    pub(crate) failures: Vec<f64>,
    /// The first failure: when it was sent, and why.
    pub(crate) first_error: Option<(f64, String)>,
    /// Whether any answer had a `lameduck_` series.
    pub(crate) lameduck_series: bool,
}

impl Scraper {
    /// Starts scraping `target` (the URL `url`) every `interval`, its times on the clock that
    /// started at `began`, until [`finish`](Scraper::finish) or `until`, whichever is first.
    pub(crate) fn start(
        target: Target,
        url: String,
        interval: Duration,
        began: Instant,
        until: Instant,
    ) -> Scraper {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(scrape(target, interval, began, until, stopped));
        Scraper {
            url,
            interval,
            stop,
            task,
        }
    }

    /// Stops the scrapes (one under way is given up) and reports them, the (first) signal
    /// having been sent at `signal_ms`.
    pub(crate) async fn finish(self, signal_ms: f64) -> MetricsReport {
        let _ = self.stop.send(true);
        let scraped = match tokio::time::timeout(SCRAPE_TIMEOUT, self.task).await {
            Ok(Ok(scraped)) => scraped,
            _ => Scraped::default(),
        };
        report(&self.url, self.interval, scraped, signal_ms)
    }
}

/// The scrape loop: one GET every `interval` (at once after a scrape that took longer),
/// until `stop` says so or is dropped, or `until`.
async fn scrape(
    target: Target,
    interval: Duration,
    began: Instant,
    until: Instant,
    mut stop: watch::Receiver<bool>,
) -> Scraped {
    let mut out = Scraped::default();
    let mut conn: Option<Conn> = None;
    let request = Request::get(&target);
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => break,
        }
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        next = (next + interval).max(sent);
        let result = tokio::select! {
            result = once(&mut conn, &target, &request) => result,
            _ = stop.changed() => break,
        };
        match result {
            Ok(samples) => {
                // The middle of the round trip: the best guess of when the service wrote it.
                let answered = Instant::now();
                let at_ms = ms((sent + (answered - sent) / 2).saturating_duration_since(began));
                out.lameduck_series |= samples.iter().any(|s| s.name.starts_with("lameduck_"));
                out.samples.push(interpret(&samples, at_ms));
            }
            Err(error) => {
                conn = None;
                let sent_ms = ms(sent.saturating_duration_since(began));
                out.failures.push(sent_ms);
                out.first_error.get_or_insert((sent_ms, error));
            }
        }
    }
    out
}

/// One scrape on the kept connection (a new one if there is none, or the server closed it;
/// once more on a new one if a reused one closed under the request): the samples.
async fn once(
    conn: &mut Option<Conn>,
    target: &Target,
    request: &Request,
) -> Result<Vec<Sample>, String> {
    let mut reused = conn.as_ref().is_some_and(|c| !c.is_closed());
    for _ in 0..2 {
        if !reused {
            *conn = tokio::time::timeout(SCRAPE_TIMEOUT, load::connect(target, false))
                .await
                .ok()
                .flatten();
        }
        let Some(c) = conn.as_mut() else {
            return Err(format!("no connection to {}", target.authority));
        };
        let error = match load::send(c, request, SCRAPE_TIMEOUT).await {
            Attempt::Answered(200, body) => {
                let text = std::str::from_utf8(&body)
                    .map_err(|e| format!("the answer is not UTF-8 text: {e}"))?;
                return exposition::parse(text)
                    .map_err(|e| format!("not the Prometheus text format: {e}"));
            }
            Attempt::Answered(status, _) => return Err(format!("status {status}")),
            Attempt::NotSent => "the connection closed before the scrape was sent".to_owned(),
            Attempt::Lost(e) | Attempt::TimedOut(e) | Attempt::Truncated(_, e) => e,
        };
        if !reused {
            return Err(error);
        }
        // The keep-alive race: the server closed the connection as the scrape went out.
        reused = false;
    }
    Err("no answer".to_owned())
}

/// The lameduck series of one scrape (the first sample of each, per service for the
/// per-service ones; those without a `service` label are left out).
pub(crate) fn interpret(samples: &[Sample], at_ms: f64) -> MetricsSample {
    let mut out = MetricsSample {
        at_ms,
        ..MetricsSample::default()
    };
    for s in samples {
        match s.name.as_str() {
            "lameduck_ready" => {
                out.ready.get_or_insert(s.value);
            }
            "lameduck_lame_duck" => {
                out.lame_duck.get_or_insert(s.value);
            }
            "lameduck_state" if s.value == 1.0 && out.state.is_none() => {
                out.state = s.label("state").map(str::to_owned);
            }
            "lameduck_in_flight" | "lameduck_connections" => {
                let Some(service) = s.label("service") else {
                    continue;
                };
                let map = if s.name == "lameduck_in_flight" {
                    &mut out.in_flight
                } else {
                    &mut out.connections
                };
                map.entry(service.to_owned()).or_insert(s.value);
            }
            _ => {}
        }
    }
    out
}

/// The report of `scraped`, the (first) signal having been sent at `signal_ms`.
pub(crate) fn report(
    url: &str,
    interval: Duration,
    scraped: Scraped,
    signal_ms: f64,
) -> MetricsReport {
    let samples = scraped.samples;
    let mut states_seen: Vec<String> = Vec::new();
    for state in samples.iter().filter_map(|s| s.state.as_ref()) {
        if !states_seen.contains(state) {
            states_seen.push(state.clone());
        }
    }
    let mut peak: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.at_ms >= signal_ms) {
        for (service, &v) in &s.in_flight {
            let top = peak.entry(service.clone()).or_insert(f64::NEG_INFINITY);
            *top = top.max(v);
        }
    }
    peak.retain(|_, v| v.is_finite());
    let answered_before = samples.iter().filter(|s| s.at_ms < signal_ms).count();
    let failed_before = scraped
        .failures
        .iter()
        .filter(|&&at| at < signal_ms)
        .count();
    let first_error = scraped
        .first_error
        .map(|(at, error)| format!("at {at:.1} ms: {error}"));
    let mut warnings = Vec::new();
    if answered_before == 0 {
        warnings.push(match &first_error {
            Some(error) if failed_before > 0 => format!(
                "the metrics URL {url} never answered before the signal ({failed_before} \
                 scrape(s) failed; the first {error})"
            ),
            _ => format!(
                "no scrape of the metrics URL {url} before the signal: --metrics-interval \
                 ({interval:?}) is longer than from ready to the signal"
            ),
        });
    }
    if !samples.is_empty() && !scraped.lameduck_series {
        warnings.push(format!(
            "the metrics URL {url} answered, but with no lameduck_ series (is it the \
             service's admin listener?)"
        ));
    }
    MetricsReport {
        url: url.to_owned(),
        interval_ms: ms(interval),
        scrapes_ok: samples.len() as u64,
        scrapes_failed: scraped.failures.len() as u64,
        scrapes_failed_after_signal: (scraped.failures.len() - failed_before) as u64,
        first_error,
        states_seen,
        ready_fell_after_signal_ms: ready_fell(&samples, signal_ms).map(|at| at - signal_ms),
        peak_in_flight_after_signal: peak,
        warnings,
        samples,
    }
}

/// When `lameduck_ready` went from 1 to 0 for the shutdown: the first fall at or after the
/// signal; if there is none and it was 0 already at the signal, the last fall before it.
fn ready_fell(samples: &[MetricsSample], signal_ms: f64) -> Option<f64> {
    let mut last = None;
    let mut falls = Vec::new();
    let mut at_signal = None;
    for s in samples {
        let Some(ready) = s.ready else { continue };
        if s.at_ms < signal_ms {
            at_signal = Some(ready);
        }
        if last == Some(1.0) && ready == 0.0 {
            falls.push(s.at_ms);
        }
        last = Some(ready);
    }
    falls
        .iter()
        .copied()
        .find(|&at| at >= signal_ms)
        .or_else(|| {
            falls
                .iter()
                .copied()
                .rfind(|&at| at < signal_ms)
                .filter(|_| at_signal == Some(0.0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: f64, ready: f64, state: &str, in_flight: f64) -> MetricsSample {
        MetricsSample {
            at_ms,
            ready: Some(ready),
            state: Some(state.to_owned()),
            lame_duck: Some(0.0),
            in_flight: BTreeMap::from([("web".to_owned(), in_flight)]),
            connections: BTreeMap::new(),
        }
    }

    fn scraped(samples: Vec<MetricsSample>, failures: Vec<f64>) -> Scraped {
        Scraped {
            first_error: failures.first().map(|&at| (at, "refused".to_owned())),
            samples,
            failures,
            lameduck_series: true,
        }
    }

    #[test]
    fn interprets_the_lameduck_series_of_a_scrape() {
        let text = "# TYPE lameduck_ready gauge\n\
                    lameduck_ready 0\n\
                    lameduck_state{state=\"starting\"} 0\n\
                    lameduck_state{state=\"ready\"} 0\n\
                    lameduck_state{state=\"draining\"} 1\n\
                    lameduck_state{state=\"stopped\"} 0\n\
                    lameduck_lame_duck 1\n\
                    lameduck_in_flight{service=\"web\"} 4\n\
                    lameduck_in_flight{service=\"say \\\"hi\\\"\"} 1\n\
                    lameduck_in_flight 99\n\
                    lameduck_connections{service=\"web\"} 2\n\
                    lameduck_requests_total{service=\"web\",outcome=\"completed\"} 12\n";
        let samples = exposition::parse(text).unwrap();
        let s = interpret(&samples, 12.5);
        assert_eq!(s.at_ms, 12.5);
        assert_eq!(s.ready, Some(0.0));
        assert_eq!(s.state.as_deref(), Some("draining"));
        assert_eq!(s.lame_duck, Some(1.0));
        assert_eq!(
            s.in_flight,
            BTreeMap::from([("web".to_owned(), 4.0), ("say \"hi\"".to_owned(), 1.0)])
        );
        assert_eq!(s.connections, BTreeMap::from([("web".to_owned(), 2.0)]));
        // None of the series: nothing but the time.
        let none = interpret(&exposition::parse("up 1\n").unwrap(), 1.0);
        assert_eq!((none.ready, none.state, none.lame_duck), (None, None, None));
        assert!(none.in_flight.is_empty());
    }

    #[test]
    fn reports_the_fall_of_ready_the_states_and_the_peaks_after_the_signal() {
        let samples = vec![
            at(100.0, 1.0, "ready", 3.0),
            at(200.0, 1.0, "ready", 9.0),
            at(300.0, 0.0, "ready", 5.0),
            at(400.0, 0.0, "draining", 6.0),
            at(500.0, 0.0, "draining", 2.0),
        ];
        let r = report(
            "http://x/metrics",
            Duration::from_millis(100),
            scraped(samples, vec![600.0, 700.0]),
            250.0,
        );
        assert_eq!((r.scrapes_ok, r.scrapes_failed), (5, 2));
        assert_eq!(r.scrapes_failed_after_signal, 2);
        assert_eq!(r.ready_fell_after_signal_ms, Some(50.0));
        assert_eq!(r.states_seen, ["ready", "draining"]);
        // The 9 was before the signal.
        assert_eq!(
            r.peak_in_flight_after_signal,
            BTreeMap::from([("web".to_owned(), 6.0)])
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.first_error.as_deref(), Some("at 600.0 ms: refused"));
        assert_eq!(r.interval_ms, 100.0);
    }

    #[test]
    fn a_fall_before_the_signal_counts_only_if_ready_stayed_down() {
        let down = vec![
            at(100.0, 1.0, "ready", 0.0),
            at(200.0, 0.0, "ready", 0.0),
            at(400.0, 0.0, "draining", 0.0),
        ];
        assert_eq!(ready_fell(&down, 300.0), Some(200.0));
        let flapped = vec![
            at(100.0, 1.0, "ready", 0.0),
            at(200.0, 0.0, "ready", 0.0),
            at(250.0, 1.0, "ready", 0.0),
            at(400.0, 1.0, "draining", 0.0),
        ];
        assert_eq!(ready_fell(&flapped, 300.0), None);
        let later = vec![
            at(100.0, 1.0, "ready", 0.0),
            at(200.0, 0.0, "ready", 0.0),
            at(250.0, 1.0, "ready", 0.0),
            at(400.0, 0.0, "draining", 0.0),
        ];
        assert_eq!(ready_fell(&later, 300.0), Some(400.0));
        assert_eq!(ready_fell(&[], 300.0), None);
    }

    #[test]
    fn a_url_that_never_answered_before_the_signal_is_a_warning() {
        let r = report(
            "http://x/metrics",
            Duration::from_millis(100),
            scraped(Vec::new(), vec![10.0, 110.0, 900.0]),
            500.0,
        );
        assert_eq!((r.scrapes_ok, r.scrapes_failed), (0, 3));
        assert_eq!(r.scrapes_failed_after_signal, 1);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("never answered before the signal (2 scrape(s) failed"),
            "{:?}",
            r.warnings
        );
        // Answers without the series: another warning.
        let mut other = scraped(vec![at(100.0, 1.0, "ready", 0.0)], Vec::new());
        other.lameduck_series = false;
        let r = report("http://x/m", Duration::from_millis(100), other, 500.0);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("no lameduck_ series"));
        // No scrape at all before the signal.
        let r = report(
            "http://x/m",
            Duration::from_secs(5),
            scraped(Vec::new(), Vec::new()),
            500.0,
        );
        assert!(
            r.warnings[0].contains("--metrics-interval"),
            "{:?}",
            r.warnings
        );
    }
}
