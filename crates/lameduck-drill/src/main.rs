//! `lameduck-drill [OPTIONS] -- <command> [args...]`: see `--help`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use lameduck_drill::{DrillArgs, drill, render_svg};

#[tokio::main]
async fn main() -> ExitCode {
    let args = DrillArgs::parse();
    let report = match drill(&args).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("lameduck-drill: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{report}");
    let mut status = if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Some(path) = &args.json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(error) = written {
            eprintln!(
                "lameduck-drill: could not write {}: {error}",
                path.display()
            );
            status = ExitCode::FAILURE;
        }
    }
    if let Some(path) = &args.records
        && let Err(error) = write_records(path, &report)
    {
        eprintln!(
            "lameduck-drill: could not write {}: {error}",
            path.display()
        );
        status = ExitCode::FAILURE;
    }
    if let Some(path) = &args.svg
        && let Err(error) = std::fs::write(path, render_svg(&report))
    {
        eprintln!(
            "lameduck-drill: could not write {}: {error}",
            path.display()
        );
        status = ExitCode::FAILURE;
    }
    status
}

/// Every request, one JSON object a line.
fn write_records(
    path: &std::path::Path,
    report: &lameduck_drill::DrillReport,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for record in &report.records {
        serde_json::to_writer(&mut out, record).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
