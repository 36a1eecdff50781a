//! `mediamem`: probe what this machine offers, run the demo, benchmark.

use std::io::Write;
use std::process::ExitCode;

mod demo;

use clap::{Parser, Subcommand};
use mediamem::probe::{probe, ProbeRow};

#[derive(Parser)]
#[command(
    name = "mediamem",
    version,
    about = "GStreamer-style zero-copy memory for Rust on Linux"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show which allocators this machine offers and what they can do.
    Probe {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stream video frames zero-copy to a consumer process, then by copy,
    /// verify every frame's checksum, and compare.
    Demo(demo::DemoArgs),
    /// The consumer process of `demo` (started by it).
    #[command(hide = true)]
    DemoConsumer {
        /// The inherited socket.
        #[arg(long)]
        fd: i32,
        /// zero-copy or copy.
        #[arg(long)]
        mode: String,
    },
}

fn main() -> ExitCode {
    // Everything is written through `out` and every write is checked:
    // `print!` would panic on a full disk or a closed pipe.
    let mut out = std::io::stdout().lock();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout, usage errors to stderr.
            let written = if e.use_stderr() {
                write!(std::io::stderr(), "{}", e.render())
            } else {
                write!(out, "{}", e.render()).and_then(|()| out.flush())
            };
            return match written {
                Ok(()) => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
                Err(w) => report(Err(format!("cannot write the output: {w}"))),
            };
        }
    };
    match cli.command {
        Command::Probe { json } => {
            let rows = probe();
            let text = if json {
                probe_json(&rows).map(|j| j + "\n")
            } else {
                Ok(probe_table(&rows))
            };
            report(text.and_then(|t| {
                out.write_all(t.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write the output: {e}"))
            }))
        }
        Command::Demo(args) => report(demo::demo(&args, &mut out)),
        Command::DemoConsumer { fd, mode } => report(demo::consumer(fd, &mode, &mut out)),
    }
}

/// The exit status of a command; an error is reported on stderr (if even
/// that fails there is nowhere left to say it: the status tells).
fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "mediamem: {e}");
            ExitCode::FAILURE
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The probe rows as an aligned text table.
fn probe_table(rows: &[ProbeRow]) -> String {
    let header = [
        "allocator",
        "mem_type",
        "available",
        "alloc",
        "fd",
        "dmabuf",
        "contiguous",
        "copies to",
        "detail",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.mem_type.clone(),
                yes(r.available).into(),
                yes(r.plain_alloc).into(),
                yes(r.fd_backed).into(),
                yes(r.dmabuf).into(),
                yes(r.contiguous).into(),
                r.copies_to.clone(),
                r.detail.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: &[String]| {
        let mut s = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// The probe rows as a JSON array.
fn probe_json(rows: &[ProbeRow]) -> Result<String, String> {
    let list: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "mem_type": r.mem_type,
                "available": r.available,
                "plain_alloc": r.plain_alloc,
                "fd_backed": r.fd_backed,
                "dmabuf": r.dmabuf,
                "contiguous": r.contiguous,
                "copies_to": r.copies_to,
                "detail": r.detail,
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).map_err(|e| format!("cannot write JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_header_and_system_row() {
        let t = probe_table(&probe());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("allocator"));
        assert!(lines[1].starts_with("---"));
        assert!(lines[2].starts_with("SystemMemory"));
        assert!(lines[2].contains("yes"));
    }

    #[test]
    fn json_round_trips() {
        let v: serde_json::Value = serde_json::from_str(&probe_json(&probe()).unwrap()).unwrap();
        assert_eq!(v[0]["name"], "SystemMemory");
        assert_eq!(v[0]["available"], true);
    }
}
