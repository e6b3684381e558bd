//! A rolling restart behind a load balancer (`--rollout N`): N instances start, the load goes
//! through the balancer, and each instance in turn is stopped, started again and given time
//! to be seen up, as a deploy does. Through a balancer nothing may be refused: it must hide
//! every restart.

use std::time::{Duration, Instant};

use crate::args::DrillArgs;
use crate::audit;
use crate::child::{Exit, Service};
use crate::load::{self, Target};
use crate::probe::{PROBE_INTERVAL, Readiness};
use crate::report::{Counts, DrillReport, InstanceReport, Outcome};
use crate::run::{self, DrillError, describe, ms, progress, wait_ready};
use crate::svg;
use crate::traffic::{self, Load, Plan};

/// One instance: its command and readiness, its process, and what happened to it.
struct Instance {
    command: Vec<String>,
    readiness: Readiness,
    service: Service,
    report: InstanceReport,
}

/// The text with instance `i`'s values in the placeholders `{i}` and `{port}`.
fn fill(text: &str, i: u16, port: Option<u16>) -> String {
    let text = text.replace("{i}", &i.to_string());
    match port {
        Some(port) => text.replace("{port}", &port.to_string()),
        None => text,
    }
}

/// Instance `i`'s `{port}`, from `--ports`.
fn port(args: &DrillArgs, i: u16) -> Result<Option<u16>, DrillError> {
    let count = args.rollout.unwrap_or(1);
    if args.ports.is_empty() {
        let uses = args.command.iter().any(|a| a.contains("{port}"))
            || [&args.ready_url, &args.ready_tcp, &args.ready_grpc]
                .iter()
                .any(|r| r.as_deref().is_some_and(|r| r.contains("{port}")));
        if uses {
            return Err(DrillError::BadTarget(
                "{port} is used but --ports is not given".into(),
            ));
        }
        return Ok(None);
    }
    if args.ports.len() != usize::from(count) {
        return Err(DrillError::BadTarget(format!(
            "--ports gives {} port(s) for --rollout {count}: one per instance",
            args.ports.len()
        )));
    }
    Ok(args.ports.get(usize::from(i) - 1).copied())
}

/// The placeholders go where each instance differs, and only there: in the command and the
/// readiness option, which must tell the instances apart.
fn check_placeholders(args: &DrillArgs, count: u16) -> Result<(), DrillError> {
    let has = |text: &str| text.contains("{i}") || text.contains("{port}");
    let shared = [
        ("--url", args.urls.first()),
        ("--front", args.front.as_ref()),
        ("--front-command", args.front_command.as_ref()),
        ("--grpc", args.grpc.as_ref()),
        ("--write", args.write.as_ref()),
        ("--read", args.read.as_ref()),
    ];
    let urls = args.urls.iter().any(|u| has(u));
    for (flag, value) in shared {
        if value.is_some_and(|v| has(v)) || (flag == "--url" && urls) {
            return Err(DrillError::BadTarget(format!(
                "{flag}: {{i}} and {{port}} are filled in only in the command and the readiness \
                 option (the load goes through the front, to every instance)"
            )));
        }
    }
    let readiness = [&args.ready_url, &args.ready_tcp, &args.ready_grpc];
    let tells_apart = readiness.iter().any(|r| r.as_deref().is_some_and(has));
    if count > 1 && !tells_apart {
        return Err(DrillError::BadTarget(
            "with --rollout, the readiness option needs {port} or {i}: each instance's own \
             readiness (one instance must not pass for another)"
                .into(),
        ));
    }
    Ok(())
}

/// Everything the rollout started, stopped (and killed if need be) when it is dropped early.
struct Fleet {
    balancer: Option<Service>,
    instances: Vec<Instance>,
}

impl Fleet {
    async fn kill_all(&mut self) {
        for instance in &mut self.instances {
            instance.service.kill().await;
        }
        if let Some(balancer) = &mut self.balancer {
            balancer.kill().await;
        }
    }
}

/// Runs the rollout `args` describes.
pub(crate) async fn drill(args: &DrillArgs) -> Result<DrillReport, DrillError> {
    let count = args.rollout.unwrap_or(1);
    let mut plan = Plan::from_args(args)?;
    let front = args
        .front
        .as_deref()
        .ok_or_else(|| DrillError::BadTarget("--rollout needs --front".into()))?;
    let trust = crate::tls::Trust::from_args(args).map_err(DrillError::BadTarget)?;
    let front = Target::parse(front, &trust).map_err(DrillError::BadTarget)?;
    check_placeholders(args, count)?;
    let mut specs = Vec::new();
    for i in 1..=count {
        let port = port(args, i)?;
        let command: Vec<String> = args.command.iter().map(|a| fill(a, i, port)).collect();
        let text = move |t: &str| fill(t, i, port);
        let readiness =
            Readiness::from_args(args, "", Some(&text)).map_err(DrillError::BadTarget)?;
        specs.push((i, command, readiness));
    }
    let bar = progress(args.quiet);
    let began = Instant::now();
    let mut fleet = Fleet {
        balancer: None,
        instances: Vec::new(),
    };
    let started = start_fleet(&mut fleet, args, specs, &front, began, &bar).await;
    if let Err(error) = started {
        fleet.kill_all().await;
        return Err(error);
    }
    let grpc = match plan.grpc(args).await {
        Ok(grpc) => grpc,
        Err(error) => {
            fleet.kill_all().await;
            return Err(error);
        }
    };
    let ready_after = began.elapsed();
    let load = Load::start(&plan, grpc, args, began, &bar);
    let shared = std::sync::Arc::clone(&load.shared);
    tokio::time::sleep(args.signal_after).await;
    let signal_at = Instant::now();
    shared.signal_sent(signal_at);

    let mut reasons = Vec::new();
    for instance in &mut fleet.instances {
        bar.set_message(format!("restarting instance {}", instance.report.instance));
        if let Err(reason) = restart(instance, args, began).await {
            instance.report.error = Some(reason.clone());
            reasons.push(format!("instance {}: {reason}", instance.report.instance));
            // A deploy stops at the first instance that does not come back.
            break;
        }
        tokio::time::sleep(args.settle).await;
    }

    let grpc = load.grpc.clone();
    let mut records = load.stop(args.request_timeout).await;
    let audit = match &plan.writes {
        Some(writes) => {
            bar.set_message("reading the writes back");
            Some(audit::read_back(writes, args.http2, args.request_timeout, began).await)
        }
        None => None,
    };
    bar.set_message("stopping");
    // The balancer first: the load is over, and a balancer that watched every instance go
    // down would only log alarms.
    if let Some(balancer) = &mut fleet.balancer {
        let _ = balancer.signal(crate::args::SignalName::Term);
        if balancer.wait(Duration::from_secs(5)).await.is_none() {
            balancer.kill().await;
        }
    }
    for instance in &mut fleet.instances {
        stop(instance, args, began, &mut reasons).await;
    }
    bar.finish_and_clear();

    for record in &mut records {
        if record.outcome == Outcome::Refused {
            record.outcome = Outcome::Failed;
            record.error =
                Some("refused during the rollout: the balancer did not hide a restart".to_owned());
        }
    }
    let requests = Counts::of(&records);
    let failures = traffic::failures(&records);
    reasons.extend(traffic::failure_reason(
        &requests,
        &failures,
        "request(s) through the front",
    ));
    if plan.writes.is_some() {
        run::audit_reasons(audit.as_ref(), &mut reasons);
    }
    if requests.ok == 0 {
        reasons.push("no request was answered: the load never reached the service".to_owned());
    }
    let instances: Vec<InstanceReport> = fleet.instances.into_iter().map(|i| i.report).collect();
    let signal_ms = ms(signal_at.duration_since(began));
    let (in_flight, in_flight_completed) = traffic::in_flight_at(&records, signal_ms);
    let mut report = DrillReport {
        command: args.command.clone(),
        passed: reasons.is_empty(),
        reasons,
        ready_after_ms: ms(ready_after),
        signal: args.signal,
        signal_at_ms: signal_ms,
        second_signal_at_ms: None,
        listener_closed_after_signal_ms: None,
        exit_after_signal_ms: None,
        exit_lag_ms: None,
        exit_code: None,
        exit_signal: None,
        expected_exit_code: args.expect_exit_code,
        requests,
        in_flight_at_signal: in_flight,
        in_flight_at_signal_completed: in_flight_completed,
        failures,
        restart: None,
        ended_at_ms: ms(began.elapsed()),
        timeline: Vec::new(),
        exit_at_ms: None,
        restart_ready_at_ms: None,
        upgrade: None,
        upgrade_ready_at_ms: None,
        window: None,
        grpc: grpc
            .as_deref()
            .map(|target| traffic::grpc_report(&records, target)),
        audit,
        websockets: Vec::new(),
        instances,
        metrics: None,
        records: Vec::new(),
    };
    report.timeline = svg::timeline(&records, report.ended_at_ms);
    report.window = svg::window(&records, &report);
    report.records = records;
    Ok(report)
}

/// Starts the balancer (if asked) and the instances, and waits until each instance is ready
/// and the front answers.
async fn start_fleet(
    fleet: &mut Fleet,
    args: &DrillArgs,
    specs: Vec<(u16, Vec<String>, Readiness)>,
    front: &Target,
    began: Instant,
    bar: &indicatif::ProgressBar,
) -> Result<(), DrillError> {
    if let Some(command) = &args.front_command {
        bar.set_message("starting the balancer");
        let shell = ["sh".to_owned(), "-c".to_owned(), format!("exec {command}")];
        fleet.balancer = Some(Service::start(&shell).map_err(DrillError::Start)?);
    }
    for (i, command, readiness) in specs {
        bar.set_message(format!("starting instance {i}"));
        let service = Service::start(&command).map_err(DrillError::Start)?;
        fleet.instances.push(Instance {
            report: InstanceReport {
                instance: u32::from(i),
                command: command.clone(),
                ..InstanceReport::default()
            },
            command,
            readiness,
            service,
        });
    }
    for instance in &mut fleet.instances {
        let i = instance.report.instance;
        wait_ready(
            &mut instance.service,
            &instance.readiness,
            args.ready_timeout,
            began,
        )
        .await
        .map_err(|e| DrillError::Start(format!("instance {i}: {e}")))?;
        instance.report.ready_at_ms = ms(began.elapsed());
    }
    bar.set_message("waiting for the front");
    let until = Instant::now() + args.ready_timeout;
    loop {
        if front_answers(front, args.http2).await {
            return Ok(());
        }
        if let Some(balancer) = &mut fleet.balancer
            && let Some(exit) = balancer.exited()
        {
            return Err(DrillError::Start(format!(
                "the balancer (--front-command) exited ({}); its output above says why",
                describe(exit)
            )));
        }
        if Instant::now() >= until {
            return Err(DrillError::Start(format!(
                "the front {} did not answer 2xx within {:?}",
                front.uri, args.ready_timeout
            )));
        }
        tokio::time::sleep(PROBE_INTERVAL * 10).await;
    }
}

async fn front_answers(front: &Target, http2: bool) -> bool {
    let request = load::Request::get(front);
    let Some(mut conn) = load::connect(front, http2).await else {
        return false;
    };
    matches!(
        load::send(&mut conn, &request, Duration::from_secs(2)).await,
        load::Attempt::Answered(200..=299, _)
    )
}

/// Signal, exit, start again, ready again: one instance's restart.
async fn restart(instance: &mut Instance, args: &DrillArgs, began: Instant) -> Result<(), String> {
    let at = |t: Instant| ms(t.duration_since(began));
    let signal_at = Instant::now();
    instance.report.signal_at_ms = Some(at(signal_at));
    instance
        .service
        .signal(args.signal)
        .map_err(|e| format!("could not send the signal: {e}"))?;
    let Some(exit) = instance.service.wait(args.exit_timeout).await else {
        instance.service.kill().await;
        return Err(format!(
            "did not exit within {:?} of the signal; it was killed",
            args.exit_timeout
        ));
    };
    instance.report.exit_at_ms = Some(at(Instant::now()));
    instance.report.exit_code = exit.code;
    instance.report.exit_signal = exit.signal;
    let wrong_code = check_code(exit, args);
    instance.service = Service::start(&instance.command)?;
    wait_ready(
        &mut instance.service,
        &instance.readiness,
        args.ready_timeout,
        Instant::now(),
    )
    .await
    .map_err(|e| format!("after its restart: {e}"))?;
    let back = Instant::now();
    instance.report.ready_again_at_ms = Some(at(back));
    instance.report.out_ms = Some(ms(back.duration_since(signal_at)));
    wrong_code.map_or(Ok(()), Err)
}

/// Stops an instance's last life at the end of the rollout.
async fn stop(
    instance: &mut Instance,
    args: &DrillArgs,
    began: Instant,
    reasons: &mut Vec<String>,
) {
    let i = instance.report.instance;
    instance.report.stopped_at_ms = Some(ms(began.elapsed()));
    if let Some(exit) = instance.service.exited() {
        instance.report.final_exit_code = exit.code;
        instance.report.final_exit_signal = exit.signal;
        // One whose restart failed has said so; any other should have run to the end.
        if instance.report.error.is_none() {
            reasons.push(format!(
                "instance {i} exited on its own ({}) before the rollout was over",
                describe(exit)
            ));
        }
        return;
    }
    let exit = match instance.service.signal(args.signal) {
        Ok(()) => instance.service.wait(args.exit_timeout).await,
        Err(_) => None,
    };
    match exit {
        Some(exit) => {
            instance.report.final_exit_code = exit.code;
            instance.report.final_exit_signal = exit.signal;
            if let Some(wrong) = check_code(exit, args) {
                reasons.push(format!("instance {i}, at the end: {wrong}"));
            }
        }
        None => {
            instance.service.kill().await;
            reasons.push(format!(
                "instance {i}, at the end: did not exit within {:?} of the signal; it was killed",
                args.exit_timeout
            ));
        }
    }
}

fn check_code(exit: Exit, args: &DrillArgs) -> Option<String> {
    (exit.code != Some(args.expect_exit_code)).then(|| {
        format!(
            "{}, expected exit code {}",
            describe(exit),
            args.expect_exit_code
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> DrillArgs {
        use clap::Parser;
        let mut cli = vec![
            "lameduck-drill",
            "--rollout",
            "2",
            "--front",
            "http://127.0.0.1:1/",
        ];
        cli.extend(extra);
        cli.extend(["--", "svc", "--port", "{port}"]);
        DrillArgs::try_parse_from(cli).unwrap()
    }

    #[test]
    fn ports_are_one_per_instance_and_placeholders_go_where_instances_differ() {
        let good = args(&["--ports", "7001,7002", "--ready-tcp", "127.0.0.1:{port}"]);
        assert_eq!(port(&good, 2).unwrap(), Some(7002));
        check_placeholders(&good, 2).unwrap();
        let short = args(&["--ports", "7001", "--ready-tcp", "127.0.0.1:{port}"]);
        let e = port(&short, 1).unwrap_err().to_string();
        assert!(e.contains("1 port(s) for --rollout 2"), "{e}");
        let none = args(&["--ready-tcp", "127.0.0.1:{port}"]);
        let e = port(&none, 1).unwrap_err().to_string();
        assert!(e.contains("--ports is not given"), "{e}");
        let same = args(&["--ports", "7001,7002", "--ready-tcp", "127.0.0.1:7001"]);
        let e = check_placeholders(&same, 2).unwrap_err().to_string();
        assert!(e.contains("each instance's own"), "{e}");
        let in_url = args(&[
            "--ports",
            "7001,7002",
            "--ready-tcp",
            "127.0.0.1:{port}",
            "--url",
            "http://127.0.0.1:{port}/",
        ]);
        let e = check_placeholders(&in_url, 2).unwrap_err().to_string();
        assert!(e.starts_with("--url:"), "{e}");
    }

    #[test]
    fn placeholders_take_the_instance_and_its_port() {
        assert_eq!(
            fill("--http 127.0.0.1:{port}", 2, Some(8082)),
            "--http 127.0.0.1:8082"
        );
        assert_eq!(fill("demo-{i}.db", 3, None), "demo-3.db");
        assert_eq!(fill("{i}:{port}:{i}", 1, Some(9)), "1:9:1");
    }
}
