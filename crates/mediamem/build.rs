//! Builds the benchmarks' C harness (`benches/gst_c/harness.c`, GStreamer's
//! side of `benches/compare.rs`) against libgstreamer and libgstallocators,
//! only with the `compare-gstreamer` feature. Without it, nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "compare-gstreamer")]
    harness();
}

#[cfg(feature = "compare-gstreamer")]
fn harness() {
    const SOURCE: &str = "benches/gst_c/harness.c";
    println!("cargo:rerun-if-changed={SOURCE}");
    let mut build = cc::Build::new();
    for lib in ["gstreamer-1.0", "gstreamer-allocators-1.0"] {
        let found = pkg_config::Config::new()
            .atleast_version("1.20")
            .probe(lib)
            .unwrap_or_else(|e| {
                panic!(
                    "{lib} not found ({e}); the compare-gstreamer feature needs \
                     libgstreamer1.0-dev and libgstreamer-plugins-base1.0-dev \
                     (cargo xtask bench installs them)"
                )
            });
        for dir in found.include_paths {
            build.include(dir);
        }
    }
    build
        .file(SOURCE)
        .flag_if_supported("-std=gnu11")
        .opt_level(2)
        .warnings(true)
        .compile("mediamem_gst_harness");
}
