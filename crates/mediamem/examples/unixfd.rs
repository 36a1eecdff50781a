//! Frames between mediamem and a real GStreamer pipeline, over GStreamer's
//! own `unixfdsink` / `unixfdsrc` protocol (`mediamem::unixfd`).
//!
//! ```text
//! unixfd demo --from-gstreamer [--frames N] [--width W] [--height H]
//!     gst-launch-1.0 videotestsrc ! unixfdsink  →  mediamem client
//! unixfd demo --to-gstreamer [--frames N] [--width W] [--height H]
//!     mediamem server  →  gst-launch-1.0 unixfdsrc ! filesink
//! unixfd receive SOCKET     a client: receive until EOS, print a summary
//! ```
//!
//! The demo prints the `gst-launch-1.0` line it runs. GStreamer 1.24 or
//! later is needed (1.22 has no unixfd elements): with
//! `MEDIAMEM_GST_ROOTFS` set (the Debian trixie root filesystem that
//! `cargo xtask test` builds under `target/gst-trixie`) the pipeline runs
//! there with `chroot` (as root); otherwise `gst-launch-1.0` from `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mediamem::pool::MemoryPool;
use mediamem::unixfd::{monotonic_now, BufferInfo, Client, Event, OutBuffer, Server};
use mediamem::{Error, Result, ShmAllocator};

struct Options {
    frames: usize,
    width: usize,
    height: usize,
}

/// Where the pipeline runs: a folder both sides see, and how to start it.
struct Place {
    root: Option<PathBuf>,
    host_dir: PathBuf,
    gst_dir: String,
}

impl Place {
    fn new() -> Place {
        let name = format!("mediamem-unixfd-demo-{}", std::process::id());
        let root = std::env::var_os("MEDIAMEM_GST_ROOTFS").map(PathBuf::from);
        let (host_dir, gst_dir) = match &root {
            Some(r) => (r.join("tmp").join(&name), format!("/tmp/{name}")),
            None => {
                let d = std::env::temp_dir().join(&name);
                let s = d.to_string_lossy().into_owned();
                (d, s)
            }
        };
        std::fs::create_dir_all(&host_dir).expect("a work folder");
        Place {
            root,
            host_dir,
            gst_dir,
        }
    }

    fn launch(&self, pipeline: &str) -> Pipeline {
        println!("gst-launch-1.0 -q -e {pipeline}");
        let mut cmd = match &self.root {
            Some(root) => {
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--fork",
                    "--kill-child",
                    "sh",
                    "-c",
                    "mount -t proc proc \"$0/proc\" && exec chroot \"$0\" /usr/bin/env -i \
                     HOME=/root PATH=/usr/bin:/bin \"$@\"",
                ])
                .arg(root)
                .arg("gst-launch-1.0");
                c
            }
            None => Command::new("gst-launch-1.0"),
        };
        Pipeline(
            cmd.args(["-q", "-e"])
                .args(pipeline.split_whitespace())
                .spawn()
                .expect("gst-launch-1.0 (or unshare and chroot) runs"),
        )
    }
}

/// A running gst-launch-1.0, stopped if still running when dropped.
struct Pipeline(Child);

impl Pipeline {
    fn succeeded(&mut self) -> bool {
        self.0.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host_dir);
    }
}

fn connect(path: &Path) -> Result<Client> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => {
                let mut c = Client::new(s, Default::default());
                c.set_timeout(Some(Duration::from_secs(30)));
                return Ok(c);
            }
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(Error::Os {
                    op: "connect",
                    source: e,
                })
            }
        }
    }
}

/// Receive until EOS: (frames, bytes, caps, seconds from the first buffer).
fn receive(client: &mut Client) -> Result<(usize, u64, String, f64)> {
    let (mut frames, mut bytes) = (0, 0u64);
    let mut first = None;
    while let Some(event) = client.recv()? {
        match event {
            Event::Caps(_) => {}
            Event::Buffer(b) => {
                first.get_or_insert_with(Instant::now);
                frames += 1;
                for m in &b.memories {
                    // Touch the frame: map it (kept mapped, so this is cheap).
                    bytes += m.map_readable()?.len() as u64;
                }
            }
            Event::Eos => break,
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok((frames, bytes, client.caps().unwrap_or("").to_owned(), secs))
}

fn from_gstreamer(o: &Options) -> Result<()> {
    let place = Place::new();
    let sock = place.host_dir.join("sock");
    let mut gst = place.launch(&format!(
        "videotestsrc num-buffers={} ! video/x-raw,format=NV12,width={},height={} \
         ! unixfdsink socket-path={}/sock wait-for-connection=true sync=false",
        o.frames, o.width, o.height, place.gst_dir
    ));
    let mut client = connect(&sock)?;
    let (frames, bytes, caps, secs) = receive(&mut client)?;
    let ok = gst.succeeded();
    println!("caps: {caps}");
    println!(
        "received {frames} frames ({:.1} MB) zero-copy from unixfdsink in {secs:.2} s: {:.0} frames/s",
        bytes as f64 / 1e6,
        frames as f64 / secs.max(1e-9)
    );
    if frames != o.frames || !ok {
        return Err(Error::Protocol(format!(
            "expected {} frames and a clean exit of gst-launch-1.0",
            o.frames
        )));
    }
    Ok(())
}

fn to_gstreamer(o: &Options) -> Result<()> {
    let place = Place::new();
    let sock = place.host_dir.join("sock");
    let mut server = Server::bind(&sock)?;
    server.set_caps(&format!(
        "video/x-raw,format=NV12,width={},height={},framerate=30/1",
        o.width, o.height
    ))?;
    let mut gst = place.launch(&format!(
        "unixfdsrc socket-path={}/sock ! filesink location={}/out.nv12 sync=false",
        place.gst_dir, place.gst_dir
    ));
    if !server.wait_for_clients(1, Duration::from_secs(30))? {
        return Err(Error::Protocol("unixfdsrc did not connect".into()));
    }
    let size = o.width * o.height * 3 / 2;
    let pool = MemoryPool::new(ShmAllocator::get(), size, None, 4, 4)?;
    let start = Instant::now();
    let mut sum = 0u64;
    for f in 0..o.frames {
        // A pool of 4: each buffer comes back when unixfdsrc releases it.
        let mut mem = loop {
            match pool.acquire_timeout(Duration::from_millis(1)) {
                Ok(m) => break m,
                Err(_) => server.process(Some(Duration::from_millis(100)))?,
            }
        };
        mem.map_mut()?.fill((f % 251) as u8);
        sum += (f % 251) as u64 * size as u64;
        server.send_buffer(OutBuffer {
            // The pool gets it back when the server lets go of its handle.
            memories: vec![mem.memory().clone()],
            info: BufferInfo {
                pts: Some(monotonic_now()),
                duration: Some(33_333_333),
                ..Default::default()
            },
            metas: vec![],
        })?;
    }
    server.send_eos()?;
    let secs = start.elapsed().as_secs_f64();
    let ok = gst.succeeded();
    let written = std::fs::read(place.host_dir.join("out.nv12")).unwrap_or_default();
    let written_sum: u64 = written.iter().map(|&b| b as u64).sum();
    println!(
        "sent {} frames zero-copy to unixfdsrc from a pool of 4 in {secs:.2} s: {:.0} frames/s",
        o.frames,
        o.frames as f64 / secs.max(1e-9)
    );
    println!(
        "filesink wrote {} bytes, {}",
        written.len(),
        if written_sum == sum && written.len() == o.frames * size {
            "equal to what was sent"
        } else {
            "NOT what was sent"
        }
    );
    if !ok || written_sum != sum || written.len() != o.frames * size {
        return Err(Error::Protocol(
            "GStreamer did not write what was sent".into(),
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Options {
        frames: 300,
        width: 640,
        height: 480,
    };
    let mut it = args.iter().skip(1);
    let mut mode = None;
    while let Some(a) = it.next() {
        let mut num = |v: &mut usize| {
            *v = it
                .next()
                .and_then(|s| s.parse().ok())
                .expect("a number after the option")
        };
        match a.as_str() {
            "--frames" => num(&mut o.frames),
            "--width" => num(&mut o.width),
            "--height" => num(&mut o.height),
            m => mode = Some(m.to_owned()),
        }
    }
    let result = match (args.first().map(String::as_str), mode.as_deref()) {
        (Some("demo"), Some("--from-gstreamer")) => from_gstreamer(&o),
        (Some("demo"), Some("--to-gstreamer")) => to_gstreamer(&o),
        (Some("receive"), Some(sock)) => connect(Path::new(sock))
            .and_then(|mut c| receive(&mut c))
            .map(|(frames, bytes, _, secs)| {
                println!("frames={frames} bytes={bytes} seconds={secs:.6}");
            }),
        _ => {
            eprintln!(
                "usage: unixfd demo --from-gstreamer|--to-gstreamer [--frames N] [--width W] \
                 [--height H] | unixfd receive SOCKET"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unixfd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
