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
                Ok(probe_table(&rows)
                    + &explicit_sync()
                    + &provider_chain()
                    + &v4l2_section(&mediamem::v4l2::probe_devices()))
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

/// The width the table fits (a classic terminal).
const TABLE_WIDTH: usize = 80;

/// The kind's capabilities in a few letters: `alloc,fd,dmabuf,contig`.
fn caps_cell(r: &ProbeRow) -> String {
    let names: Vec<&str> = [
        (r.plain_alloc, "alloc"),
        (r.fd_backed, "fd"),
        (r.dmabuf, "dmabuf"),
        (r.contiguous, "contig"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// `text` wrapped at word boundaries into lines of at most `width`
/// characters after `indent` (a word longer than that is cut).
fn wrap(text: &str, indent: usize, width: usize) -> Vec<String> {
    let room = width.saturating_sub(indent).max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > room {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            let rest = word.split_off(room);
            lines.push(word.into_iter().collect());
            word = rest;
        }
        let word: String = word.into_iter().collect();
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    let pad = " ".repeat(indent);
    lines.into_iter().map(|l| format!("{pad}{l}")).collect()
}

/// The probe rows as an aligned text table that fits 80 columns: one line
/// per kind (name, available, capabilities, where copies go), its detail
/// wrapped on indented lines below. `--json` has every field.
fn probe_table(rows: &[ProbeRow]) -> String {
    let header = ["allocator", "ok", "caps", "copies to"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                yes(r.available).into(),
                caps_cell(r),
                r.copies_to.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
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
    for (row, r) in cells.iter().zip(rows) {
        out.push_str(&line(row));
        for l in wrap(&r.detail, 4, TABLE_WIDTH) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// Whether sync_file export and import work on each dma-buf kind.
fn explicit_sync() -> String {
    let mut out = String::from("\nexplicit sync (sync_file export / import) per dma-buf kind:\n");
    let word = |r: &Result<(), String>| if r.is_ok() { "yes" } else { "no" };
    for row in mediamem::probe::probe_explicit_sync() {
        out.push_str(&format!(
            "  {:<32} export {:<3} import {}\n",
            row.kind,
            word(&row.export),
            word(&row.import)
        ));
        let mut why = row.export.err();
        if let (None, Err(e)) = (&why, &row.import) {
            why = Some(e.clone());
        }
        if let Some(why) = why {
            for l in wrap(&why, 6, TABLE_WIDTH) {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    out
}

/// The dma-buf provider chain (`DmaBufProvider::new()`, memfd allowed) in
/// order: the one that would serve an allocation now, and why each one
/// before it would not.
fn provider_chain() -> String {
    use mediamem::provider::DmaBufProvider;
    let mut out = String::from("\ndma-buf provider chain (allocator \"auto\"):\n");
    let chain = match DmaBufProvider::new() {
        Ok(chain) => chain.allow_non_dmabuf(true),
        Err(e) => {
            for l in wrap(&e.to_string(), 2, TABLE_WIDTH) {
                out.push_str(&l);
                out.push('\n');
            }
            return out;
        }
    };
    let mut served = false;
    for (i, (provider, outcome)) in chain.explain().into_iter().enumerate() {
        let state = match (&outcome, served) {
            (Ok(()), false) => "serves now",
            (Ok(()), true) => "would serve next",
            (Err(_), _) => "no",
        };
        out.push_str(&format!("  {}. {:<12} {state}\n", i + 1, provider.name()));
        if let Err(reason) = &outcome {
            for l in wrap(&reason.to_string(), 6, TABLE_WIDTH) {
                out.push_str(&l);
                out.push('\n');
            }
        }
        served |= outcome.is_ok();
    }
    out
}

/// The V4L2 capture devices: each with its driver, card, API, formats,
/// and whether its buffers export as dma-bufs and it imports them.
fn v4l2_section(devices: &[mediamem::v4l2::DeviceReport]) -> String {
    if devices.is_empty() {
        return "\nV4L2 capture devices: none\n".into();
    }
    let mut out = String::from("\nV4L2 capture devices:\n");
    let outcome = |r: &Result<(), String>| match r {
        Ok(()) => "yes".to_owned(),
        Err(e) => format!("no ({e})"),
    };
    for d in devices {
        out.push_str(&format!(
            "  {} {} \"{}\" {}\n",
            d.path.display(),
            d.capability.driver,
            d.capability.card,
            if d.capability.is_multiplanar() {
                "multi-planar"
            } else {
                "single-planar"
            }
        ));
        for text in [
            format!("formats: {}", d.formats.join(" ")),
            format!(
                "EXPBUF export: {}; DMABUF import: {}",
                outcome(&d.export),
                outcome(&d.import)
            ),
        ] {
            for l in wrap(&text, 6, TABLE_WIDTH) {
                out.push_str(&l);
                out.push('\n');
            }
        }
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
        assert!(lines[3].starts_with("    heap"), "{}", lines[3]);
    }

    #[test]
    fn table_fits_80_columns_and_keeps_every_word() {
        let mut rows = probe();
        rows[0].detail = format!("{} {}", "wörd ".repeat(60), "#".repeat(200));
        let t = probe_table(&rows);
        for l in t.lines() {
            assert!(
                l.chars().count() <= TABLE_WIDTH,
                "{} wide: {l}",
                l.chars().count()
            );
        }
        assert_eq!(t.matches("wörd").count(), 60, "no word lost");
        assert_eq!(t.matches('#').count(), 200);
    }

    #[test]
    fn v4l2_section_lists_devices_or_none() {
        assert!(v4l2_section(&[]).contains("V4L2 capture devices: none"));
        let dev = mediamem::v4l2::DeviceReport {
            path: "/dev/video7".into(),
            capability: mediamem::v4l2::Capability {
                driver: "vivid".into(),
                card: "vivid-000-vid-cap".into(),
                bus_info: String::new(),
                version: 0,
                capabilities: 0x1,
                device_caps: 0x1,
            },
            formats: vec!["YUYV".into(), "NV12".into()],
            export: Ok(()),
            import: Err("not supported".into()),
        };
        let t = v4l2_section(&[dev]);
        assert!(
            t.contains("/dev/video7 vivid \"vivid-000-vid-cap\" single-planar"),
            "{t}"
        );
        assert!(t.contains("formats: YUYV NV12"), "{t}");
        assert!(
            t.contains("EXPBUF export: yes; DMABUF import: no (not supported)"),
            "{t}"
        );
    }

    #[test]
    fn json_round_trips() {
        let v: serde_json::Value = serde_json::from_str(&probe_json(&probe()).unwrap()).unwrap();
        assert_eq!(v[0]["name"], "SystemMemory");
        assert_eq!(v[0]["available"], true);
    }
}
