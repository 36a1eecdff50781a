//! `cargo xtask bench-unixfd [--runs N]`: what receiving from GStreamer's
//! `unixfdsink` costs, mediamem's client against GStreamer's own
//! `unixfdsrc`.
//!
//! The sender is the same in both: `videotestsrc ! NV12 640x480 !
//! unixfdsink wait-for-connection=true sync=false` in the trixie root
//! filesystem (`gst.rs`). The receivers:
//!
//! * mediamem: the `unixfd` example's `receive` (a `Client` that maps every
//!   memory and drops the buffer, which sends its release), on the host;
//! * GStreamer: `gst-launch-1.0 unixfdsrc ! fakesink sync=false` in the
//!   root filesystem.
//!
//! Each receiver runs under `sh`, which prints its children's CPU time
//! (`cutime + cstime` of `/proc/self/stat`, in clock ticks) when the
//! receiver exits. Fixed costs (process start, GStreamer's plugin loading)
//! are taken out by running each receiver for two frame counts and using
//! the difference: CPU per frame = (CPU(N2) − CPU(N1)) / (N2 − N1), and
//! frames/s = (N2 − N1) / (wall(N2) − wall(N1)). Runs are interleaved
//! (both receivers, both counts, every round, the order alternating), and
//! each figure is the median over the rounds, with its range.
//!
//! The result goes into `bench/results.md`, between the markers of its own
//! section (appended the first time).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::gst;

type Res<T> = Result<T, String>;

const N1: usize = 500;
const N2: usize = 8500;
const WIDTH: usize = 640;
const HEIGHT: usize = 480;
const START: &str = "<!-- unixfd-bench:start -->";
const END: &str = "<!-- unixfd-bench:end -->";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Receiver {
    Mediamem,
    Gstreamer,
}

/// One run: receiver CPU seconds and wall seconds.
struct Run {
    cpu: f64,
    wall: f64,
}

/// `cutime + cstime` (seconds) from the `/proc/<pid>/stat` line at the end
/// of `output`.
fn children_cpu(output: &str, ticks: f64) -> Res<f64> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(") "))
        .ok_or_else(|| format!("no /proc stat line in {output:?}"))?;
    let after = &line[line.rfind(')').unwrap_or(0) + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3; cutime 16, cstime 17.
    let get = |n: usize| -> Res<f64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("field {n} missing in {line:?}"))
    };
    Ok((get(16)? + get(17)?) / ticks)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The `sh -c` script that runs `"$@"` and prints its CPU time.
const TIMED: &str = "\"$@\" >/dev/null; s=$?; cat /proc/$$/stat; exit $s";

fn one_run(root: &Path, example: &Path, who: Receiver, frames: usize, ticks: f64) -> Res<Run> {
    let name = format!("mediamem-bench-{}", std::process::id());
    let host_dir = root.join("tmp").join(&name);
    let _ = fs::remove_dir_all(&host_dir);
    fs::create_dir_all(&host_dir).map_err(|e| e.to_string())?;
    let sock_host = host_dir.join("sock");
    let sock_gst = format!("/tmp/{name}/sock");
    let caps = format!("video/x-raw,format=NV12,width={WIDTH},height={HEIGHT}");
    let mut sink = gst::launch(
        root,
        &[
            "-q",
            "videotestsrc",
            &format!("num-buffers={frames}"),
            "!",
            &caps,
            "!",
            "unixfdsink",
            &format!("socket-path={sock_gst}"),
            "wait-for-connection=true",
            "sync=false",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .map_err(|e| format!("start the sink: {e}"))?;
    let end = Instant::now() + Duration::from_secs(30);
    while !sock_host.exists() {
        if Instant::now() > end {
            let _ = sink.kill();
            let _ = sink.wait();
            return Err("unixfdsink did not create its socket".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut receiver = match who {
        Receiver::Mediamem => {
            let mut c = Command::new("sh");
            c.args(["-c", TIMED, "sh"])
                .arg(example)
                .arg("receive")
                .arg(&sock_host);
            c
        }
        Receiver::Gstreamer => gst::chroot(
            root,
            "sh",
            &[
                "-c",
                TIMED,
                "sh",
                "gst-launch-1.0",
                "-q",
                "unixfdsrc",
                &format!("socket-path={sock_gst}"),
                "!",
                "fakesink",
                "sync=false",
            ],
        ),
    };
    let start = Instant::now();
    let out = receiver
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run the {who:?} receiver: {e}"))?;
    let wall = start.elapsed().as_secs_f64();
    let sink_ok = sink.wait().is_ok_and(|s| s.success());
    let _ = fs::remove_dir_all(&host_dir);
    if !out.status.success() || !sink_ok {
        return Err(format!(
            "{who:?} receiver ({}) or sink failed: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let cpu = children_cpu(&String::from_utf8_lossy(&out.stdout), ticks)?;
    Ok(Run { cpu, wall })
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

pub fn bench_unixfd(runs: usize) -> Res<()> {
    let root = gst::rootfs()?;
    let ws = crate::root();
    if !crate::cargo(&[
        "build",
        "--release",
        "-q",
        "-p",
        "mediamem",
        "--example",
        "unixfd",
    ]) {
        return Err("building the unixfd example failed".into());
    }
    let example = ws.join("target/release/examples/unixfd");
    let ticks = clock_ticks();
    let load_before = loadavg();
    let who_all = [Receiver::Mediamem, Receiver::Gstreamer];
    // Per receiver: per-round CPU µs per frame and frames/s.
    let mut cpu_per_frame = [Vec::new(), Vec::new()];
    let mut fps = [Vec::new(), Vec::new()];
    for round in 0..runs {
        let mut results = [[None, None], [None, None]];
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (w, _) in who_all.iter().enumerate() {
            for n in 0..2 {
                order.push((w, n));
            }
        }
        if round % 2 == 1 {
            order.reverse();
        }
        for (w, n) in order {
            let frames = [N1, N2][n];
            let r = one_run(&root, &example, who_all[w], frames, ticks)?;
            eprintln!(
                "bench-unixfd: round {round} {:?} {frames} frames: cpu {:.3} s, wall {:.3} s",
                who_all[w], r.cpu, r.wall
            );
            results[w][n] = Some(r);
        }
        for w in 0..2 {
            let (Some(a), Some(b)) = (&results[w][0], &results[w][1]) else {
                continue;
            };
            let frames = (N2 - N1) as f64;
            cpu_per_frame[w].push((b.cpu - a.cpu) / frames * 1e6);
            fps[w].push(frames / (b.wall - a.wall).max(1e-9));
        }
    }
    let load = format!("{} before, {} after", load_before, loadavg());
    let mut table = String::new();
    table.push_str(&format!(
        "{START}\n## unixfd: receiving from GStreamer's unixfdsink\n\n\
         `cargo xtask bench-unixfd --runs {runs}` on {} (GStreamer 1.26.2 of Debian trixie in \
         `target/gst-trixie`): `videotestsrc ! video/x-raw,format=NV12,width={WIDTH},height={HEIGHT} \
         ! unixfdsink wait-for-connection=true sync=false`, received by mediamem's client (the \
         `unixfd` example's `receive`: maps every memory, drops the buffer, which releases it) \
         or by `gst-launch-1.0 unixfdsrc ! fakesink sync=false`. CPU is the receiving \
         process's user + system time; fixed costs (start-up, plugin loading) are removed by \
         running {N1} and {N2} frames and dividing the differences by {}. {runs} interleaved \
         rounds; median (min–max). Load average (1, 5, 15 min): {load}.\n\n\
         | receiver | CPU per frame | frames/s (end to end) |\n|---|---|---|\n",
        host_summary(),
        N2 - N1
    ));
    for (w, who) in who_all.iter().enumerate() {
        let (c, cmin, cmax) = median_range(cpu_per_frame[w].clone());
        let (f, fmin, fmax) = median_range(fps[w].clone());
        table.push_str(&format!(
            "| {} | {c:.1} µs ({cmin:.1}–{cmax:.1}) | {f:.0} ({fmin:.0}–{fmax:.0}) |\n",
            match who {
                Receiver::Mediamem => "mediamem `unixfd::Client`",
                Receiver::Gstreamer => "GStreamer `unixfdsrc ! fakesink`",
            }
        ));
    }
    table.push_str(
        "\nWhat each receiver does per frame: mediamem's client checks the received fd \
         (fstat, fstatfs, seals), maps it (kept mapped: one mmap and munmap per buffer), maps \
         the memory and sends the release from the memory's drop; `unixfdsrc ! fakesink` \
         wraps the fd without mapping it (1.26.2 has no KEEP_MAPPED), pushes the buffer \
         through a pad to fakesink and sends the release from a weak-ref notify. frames/s \
         is end to end: the sender (videotestsrc drawing each frame, unixfdsink) shares the \
         2 cores with the receiver.\n",
    );
    table.push_str(END);
    table.push('\n');
    println!("{table}");
    let path = ws.join("bench/results.md");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let new = match (text.find(START), text.find(END)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{}{}",
                &text[..a],
                table.trim_end(),
                &text[b + END.len()..]
            )
        }
        _ => format!("{}\n{table}", text.trim_end()),
    };
    fs::write(&path, new).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("bench-unixfd: wrote {}", path.display());
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn host_summary() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("this machine ({cpus} cores, {model})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_comes_from_cutime_and_cstime() {
        let out = "frames=3\n1234 (sh) S 1 2 3 4 5 6 7 8 9 10 11 12 250 50 20 0\n";
        // utime 11, stime 12, cutime 250, cstime 50 (ticks).
        assert_eq!(children_cpu(out, 100.0).unwrap(), 3.0);
        assert!(children_cpu("no stat here", 100.0).is_err());
    }

    #[test]
    fn median_and_range() {
        assert_eq!(median_range(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_range(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
