//! The dma-buf provider chain: order, fallback, reasons, constraints.
//!
//! The tests that are not `#[ignore]`d run everywhere and expect what the
//! machine has: on the host (no heaps, no udmabuf, no DRM) every device
//! provider is "not present"; in the QEMU guest (system heap, udmabuf,
//! bochs, vgem) they serve. The `#[ignore]`d ones need the guest's devices
//! and fail without them (`cargo xtask vm-test` runs them).

use std::path::Path;

use mediamem::drm::list_devices;
use mediamem::phys::{free_huge_pages, is_phys_memory, HugePageAllocator, CMA_HEAPS};
use mediamem::provider::{DmaBufProvider, Provider, PROVIDERS_ENV};
use mediamem::{is_dmabuf_memory, is_fd_memory, Error, ProviderReason, Result};

mod common;

/// Whether `provider`'s device is on this machine (whatever its mode).
fn present(provider: &Provider) -> bool {
    match provider {
        Provider::CmaHeap => CMA_HEAPS
            .iter()
            .any(|h| Path::new(&format!("/dev/dma_heap/{h}")).exists()),
        Provider::SystemHeap => Path::new("/dev/dma_heap/system").exists(),
        Provider::Heap(name) => Path::new(&format!("/dev/dma_heap/{name}")).exists(),
        Provider::Udmabuf => Path::new("/dev/udmabuf").exists(),
        Provider::DrmDumb => list_devices().iter().any(|d| d.dumb && d.prime_export),
        Provider::HugePage | Provider::Memfd => true,
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The bytes written are the bytes read, through a second map.
fn round_trip(mem: &mediamem::Memory) -> Result<()> {
    mem.map_writable()?.fill(0x5a);
    assert!(mem.map_readable()?.iter().all(|&b| b == 0x5a));
    Ok(())
}

#[test]
fn the_chain_takes_the_first_provider_present_and_ends_at_memfd() -> Result<()> {
    let chain = DmaBufProvider::with_order(Provider::DEFAULT_ORDER).allow_non_dmabuf(true);
    let expected = Provider::DEFAULT_ORDER
        .iter()
        .find(|p| present(p))
        .unwrap()
        .clone();
    let got = chain.alloc_report(10_000, None)?;
    assert_eq!(got.provider, expected, "skipped: {:?}", got.skipped);
    assert_eq!(got.memory.size(), 10_000);
    assert!(is_fd_memory(&got.memory));
    assert_eq!(is_dmabuf_memory(&got.memory), expected.is_dmabuf());
    assert_eq!(chain.provider_of(&got.memory), Some(expected.clone()));
    assert_eq!(chain.provider_of(&mediamem::Memory::with_size(16)?), None);
    round_trip(&got.memory)?;
    // Everything before it was absent (as root nothing is refused for its
    // mode).
    for f in &got.skipped {
        assert!(
            matches!(f.reason, ProviderReason::NotPresent { .. }) || !is_root(),
            "{}: {}",
            f.provider,
            f.reason
        );
    }
    Ok(())
}

#[test]
fn without_memfd_the_error_lists_every_provider_with_its_reason() {
    // A chain of providers that cannot serve here: a heap that exists
    // nowhere, and memfd, which is refused as not a dma-buf. On the host
    // the default device providers join them, all absent.
    let mut order = vec![Provider::Heap("mediamem-no-such-heap".into())];
    order.extend(
        Provider::DEFAULT_ORDER
            .iter()
            .filter(|p| **p != Provider::Memfd && !present(p))
            .cloned(),
    );
    order.push(Provider::Memfd);
    let chain = DmaBufProvider::with_order(order.clone());
    let e = chain.alloc(4096, None).unwrap_err();
    let text = e.to_string();
    let Error::NoProvider { size, failures } = e else {
        panic!("{text}")
    };
    assert_eq!(size, 4096);
    let names: Vec<String> = order.iter().map(Provider::name).collect();
    let listed: Vec<String> = failures.iter().map(|f| f.provider.clone()).collect();
    assert_eq!(listed, names);
    for f in &failures {
        assert!(text.contains(&format!("\n  {}: ", f.provider)), "{text}");
        if f.provider == "memfd" {
            assert!(matches!(f.reason, ProviderReason::Refused { .. }), "{f:?}");
            assert_eq!(f.reason.errno(), None);
        } else {
            assert!(
                matches!(f.reason, ProviderReason::NotPresent { .. }),
                "{f:?}"
            );
            assert!(text.contains("not present"), "{text}");
        }
    }
    assert_eq!(
        failures[0].reason.errno(),
        Some(rustix::io::Errno::NOENT),
        "the missing heap's open keeps its errno"
    );
    eprintln!("{text}");
}

#[test]
fn the_environment_variable_sets_the_default_order() {
    const CHILD: &str = "MEDIAMEM_PROVIDER_ENV_CHILD";
    if let Ok(which) = std::env::var(CHILD) {
        match which.as_str() {
            "good" => {
                let chain = DmaBufProvider::new().unwrap();
                assert_eq!(chain.order(), &[Provider::Memfd, Provider::Udmabuf]);
                // Code that sets its own order is not overridden.
                let own = DmaBufProvider::with_order([Provider::SystemHeap]);
                assert_eq!(own.order(), &[Provider::SystemHeap]);
            }
            _ => {
                let e = DmaBufProvider::new().unwrap_err();
                assert!(
                    matches!(&e, Error::InvalidConfig { what, .. } if what.contains(PROVIDERS_ENV)),
                    "{e}"
                );
            }
        }
        return;
    }
    assert_eq!(
        DmaBufProvider::new().unwrap().order(),
        Provider::DEFAULT_ORDER,
        "unset here"
    );
    for (which, value) in [("good", "memfd, udmabuf"), ("bad", "memfd,floppy")] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_environment_variable_sets_the_default_order",
                "--nocapture",
            ])
            .env(CHILD, which)
            .env(PROVIDERS_ENV, value)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{which}:\n{text}");
        assert!(text.contains("1 passed"), "{which}:\n{text}");
    }
}

#[test]
fn exclusion_removes_a_provider() {
    let chain = DmaBufProvider::with_order(Provider::DEFAULT_ORDER)
        .exclude(&Provider::SystemHeap)
        .exclude(&Provider::Memfd);
    assert_eq!(
        chain.order(),
        &[Provider::CmaHeap, Provider::Udmabuf, Provider::DrmDumb]
    );
}

/// Take every free huge page (held by the returned memories).
fn take_all_huge_pages() -> Vec<mediamem::Memory> {
    let Ok(huge) = HugePageAllocator::new() else {
        return Vec::new();
    };
    let n = free_huge_pages().unwrap_or(0);
    (0..n).map_while(|_| huge.alloc(4096, None).ok()).collect()
}

#[test]
fn contiguous_without_cma_or_a_free_huge_page_names_both() {
    let _held = take_all_huge_pages();
    let chain = DmaBufProvider::with_order([
        Provider::CmaHeap,
        Provider::SystemHeap,
        Provider::Udmabuf,
        Provider::HugePage,
        Provider::Memfd,
    ])
    .contiguous(true)
    .allow_non_dmabuf(true);
    match chain.alloc_report(4096, None) {
        Ok(got) => {
            // Only a CMA heap can serve once the huge pages are taken.
            assert_eq!(got.provider, Provider::CmaHeap);
            assert!(is_phys_memory(&got.memory));
        }
        Err(Error::NoProvider { failures, .. }) => {
            assert!(!present(&Provider::CmaHeap) || !is_root());
            let reason = |name: &str| &failures.iter().find(|f| f.provider == name).unwrap().reason;
            for name in ["system-heap", "udmabuf", "memfd"] {
                assert!(
                    matches!(reason(name), ProviderReason::Refused { constraint } if constraint.contains("contiguous")),
                    "{name}: {}",
                    reason(name)
                );
            }
            assert!(
                matches!(reason("cma-heap"), ProviderReason::NotPresent { .. }),
                "{}",
                reason("cma-heap")
            );
            let huge = reason("hugepage");
            assert!(
                matches!(huge, ProviderReason::Exhausted { errno, .. } if *errno == rustix::io::Errno::NOMEM)
                    || matches!(huge, ProviderReason::NotPresent { .. }),
                "{huge}"
            );
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn an_exhausted_provider_is_skipped_with_its_errno() -> Result<()> {
    if HugePageAllocator::new().is_err() {
        common::skip(
            "an_exhausted_provider_is_skipped_with_its_errno",
            "no hugetlb",
        );
        return Ok(());
    }
    let _held = take_all_huge_pages();
    let chain =
        DmaBufProvider::with_order([Provider::HugePage, Provider::Memfd]).allow_non_dmabuf(true);
    let got = chain.alloc_report(4096, None)?;
    assert_eq!(got.provider, Provider::Memfd);
    let reason = &got.skipped[0].reason;
    assert!(
        matches!(reason, ProviderReason::Exhausted { .. }),
        "{reason}"
    );
    assert_eq!(reason.errno(), Some(rustix::io::Errno::NOMEM));
    assert!(reason.to_string().contains("exhausted"), "{reason}");
    Ok(())
}

#[test]
fn a_low_address_limit_is_honoured_or_refused_never_ignored() -> Result<()> {
    // No page can end below physical address 0: refused, as root for the
    // address, otherwise because frames cannot be read.
    let chain = DmaBufProvider::with_order([Provider::Memfd])
        .allow_non_dmabuf(true)
        .max_phys_addr(0);
    let Err(Error::NoProvider { failures, .. }) = chain.alloc(3 * 4096, None) else {
        panic!("a limit of 0 was not refused")
    };
    let ProviderReason::Refused { constraint } = &failures[0].reason else {
        panic!("{}", failures[0].reason)
    };
    assert!(constraint.contains("max_phys_addr 0x0"), "{constraint}");
    if is_root() {
        assert!(constraint.contains("a page ends at"), "{constraint}");
    } else {
        assert!(constraint.contains("cannot be checked"), "{constraint}");
    }
    // No limit in effect: honoured where frames can be read.
    let chain = DmaBufProvider::with_order([Provider::Memfd])
        .allow_non_dmabuf(true)
        .max_phys_addr(u64::MAX);
    assert_eq!(chain.alloc(3 * 4096, None).is_ok(), is_root());
    Ok(())
}

#[test]
fn cached_constraints_refuse_providers_that_do_not_say() {
    let chain = DmaBufProvider::with_order([Provider::DrmDumb, Provider::Memfd])
        .allow_non_dmabuf(true)
        .cached(Some(false));
    let Err(Error::NoProvider { failures, .. }) = chain.alloc(4096, None) else {
        panic!("uncached memory from a cached provider")
    };
    for f in &failures {
        assert!(
            matches!(&f.reason, ProviderReason::Refused { constraint } if constraint.starts_with("uncached")),
            "{}: {}",
            f.provider,
            f.reason
        );
    }
}

#[test]
fn unprivileged_users_are_told_the_nodes_mode_and_the_chain_moves_on() {
    const CHILD: &str = "MEDIAMEM_PROVIDER_NOBODY_CHILD";
    let test = "unprivileged_users_are_told_the_nodes_mode_and_the_chain_moves_on";
    if std::env::var_os(CHILD).is_some() {
        let chain = DmaBufProvider::with_order(Provider::DEFAULT_ORDER).allow_non_dmabuf(true);
        let got = chain.alloc_report(4096, None).unwrap();
        for f in &got.skipped {
            let node = match f.provider.as_str() {
                "system-heap" => Some("/dev/dma_heap/system".to_owned()),
                "udmabuf" => Some("/dev/udmabuf".to_owned()),
                _ => None,
            };
            let Some(node) = node.filter(|n| Path::new(n).exists()) else {
                continue;
            };
            let mode = rustix::fs::stat(node.as_str()).unwrap().st_mode & 0o7777;
            if mode & 0o006 == 0o006 {
                continue; // open to everyone: nothing to report
            }
            match &f.reason {
                ProviderReason::NoPermission {
                    path,
                    mode: m,
                    errno,
                    fix,
                    ..
                } => {
                    assert_eq!(path, &node);
                    assert_eq!(*m, mode);
                    assert_eq!(*errno, rustix::io::Errno::ACCESS);
                    assert!(
                        fix.contains("udev rule") || fix.contains("usermod"),
                        "{fix}"
                    );
                    let text = f.reason.to_string();
                    assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
                    eprintln!("{}: {text}", f.provider);
                }
                other => panic!("{}: {other}", f.provider),
            }
        }
        eprintln!("served by {}", got.provider);
        return;
    }
    if !is_root() {
        common::skip(test, "needs root to start a child as nobody");
        return;
    }
    let text = common::run_test_as_nobody("provider", test, CHILD);
    // What nobody was told, in this test's log.
    for line in text
        .lines()
        .filter(|l| l.contains(": no permission") || l.starts_with("served by"))
    {
        eprintln!("as nobody: {line}");
    }
}

#[test]
fn explain_shows_the_chain_and_who_would_serve() {
    let chain = DmaBufProvider::with_order(Provider::DEFAULT_ORDER).allow_non_dmabuf(true);
    let lines = chain.explain();
    assert_eq!(lines.len(), Provider::DEFAULT_ORDER.len());
    let first_ok = lines.iter().position(|(_, r)| r.is_ok()).unwrap();
    let expected = Provider::DEFAULT_ORDER.iter().position(present).unwrap();
    assert_eq!(first_ok, expected, "{lines:?}");
}

// ---- in the guest: the devices serve in the order asked ----

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn guest_default_order_then_exclusions_then_a_configured_order() -> Result<()> {
    let picked = |chain: DmaBufProvider| -> Result<Provider> {
        let got = chain.alloc_report(1 << 20, None)?;
        assert!(is_dmabuf_memory(&got.memory));
        assert_eq!(got.memory.size(), 1 << 20);
        round_trip(&got.memory)?;
        assert_eq!(chain.provider_of(&got.memory), Some(got.provider.clone()));
        Ok(got.provider)
    };
    // A CMA heap, when the guest kernel has a CMA area, comes first.
    let first = if present(&Provider::CmaHeap) {
        Provider::CmaHeap
    } else {
        Provider::SystemHeap
    };
    assert_eq!(
        picked(DmaBufProvider::with_order(Provider::DEFAULT_ORDER))?,
        first
    );
    let default =
        || DmaBufProvider::with_order(Provider::DEFAULT_ORDER).exclude(&Provider::CmaHeap);
    assert_eq!(picked(default())?, Provider::SystemHeap);
    assert_eq!(
        picked(default().exclude(&Provider::SystemHeap))?,
        Provider::Udmabuf
    );
    assert_eq!(
        picked(
            default()
                .exclude(&Provider::SystemHeap)
                .exclude(&Provider::Udmabuf)
        )?,
        Provider::DrmDumb
    );
    assert_eq!(
        picked(DmaBufProvider::with_order([
            Provider::DrmDumb,
            Provider::Udmabuf
        ]))?,
        Provider::DrmDumb
    );
    assert_eq!(
        picked(DmaBufProvider::with_order([
            Provider::Udmabuf,
            Provider::SystemHeap
        ]))?,
        Provider::Udmabuf
    );
    Ok(())
}

#[test]
#[ignore = "device test: runs in the QEMU guest (cargo xtask vm-test)"]
fn guest_drm_provider_honours_prefix_and_size() -> Result<()> {
    let params = mediamem::AllocationParams {
        prefix: 100,
        padding: 50,
        ..Default::default()
    };
    let chain = DmaBufProvider::with_order([Provider::DrmDumb]);
    let mem = chain.alloc(10_000, Some(&params))?;
    assert_eq!((mem.offset(), mem.size()), (100, 10_000));
    assert!(mem.maxsize() >= 10_150);
    round_trip(&mem)
}
