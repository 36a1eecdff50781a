//! Allocators: the [`AllocatorImpl`] trait, the cheap [`Allocator`] handle,
//! [`AllocationParams`], and the process-wide registry
//! (`gst_allocator_register` / `find` / `set_default`).

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use bitflags::bitflags;

use super::system::SystemAllocator;
use super::{Memory, MemoryFlags, MemoryParts};
use crate::error::{Error, Result};

bitflags! {
    /// Flags of an allocator (`GstAllocatorFlags`), with GStreamer's values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct AllocatorFlags: u32 {
        /// The allocator has its own way of allocating (it needs more than a
        /// size, e.g. an fd): copies of its memories go to the default
        /// allocator.
        const CUSTOM_ALLOC = 16;
        /// Copies of this allocator's memories go to the default allocator
        /// (GStreamer 1.24).
        const NO_COPY = 32;
        /// The first flag free for custom use.
        const LAST = 16 << 16;
        const _ = !0;
    }
}

/// Parameters of an allocation (`GstAllocationParams`).
///
/// ```
/// use mediamem::{AllocationParams, Allocator, MemoryFlags};
///
/// let params = AllocationParams::new(MemoryFlags::ZERO_PREFIXED, 63, 16, 0);
/// let mem = Allocator::system().alloc(1000, Some(&params))?;
/// assert_eq!(mem.offset(), 16);
/// assert_eq!(mem.size(), 1000);
/// # Ok::<(), mediamem::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AllocationParams {
    /// Flags applied to the new memory.
    pub flags: MemoryFlags,
    /// Alignment mask (bytes − 1): must be `2^n − 1`.
    pub align: usize,
    /// Bytes reserved before the visible region (the memory's offset).
    pub prefix: usize,
    /// Bytes reserved after the visible region.
    pub padding: usize,
}

impl AllocationParams {
    /// Parameters with every field given.
    pub fn new(flags: MemoryFlags, align: usize, prefix: usize, padding: usize) -> Self {
        AllocationParams {
            flags,
            align,
            prefix,
            padding,
        }
    }

    /// Check the alignment mask (`((align + 1) & align) == 0`).
    pub fn validate(&self) -> Result<()> {
        check_align_mask(self.align)
    }
}

/// Check that `align` is an alignment mask of the form `2^n − 1`.
pub(crate) fn check_align_mask(align: usize) -> Result<()> {
    if align.wrapping_add(1) & align != 0 {
        return Err(Error::InvalidAlign { align });
    }
    Ok(())
}

/// What an allocator implementation provides (`GstAllocatorClass` plus the
/// per-instance fields of `GstAllocator`).
///
/// Implement it to write a custom allocator, then wrap it with
/// [`Allocator::new`]. Memory-level behaviour (map, unmap, share, is_span,
/// copy) belongs to the [`MemoryBackend`](crate::MemoryBackend) each
/// allocation returns.
///
/// ```
/// use mediamem::{AllocationParams, Allocator, AllocatorImpl, MemoryParts, Result};
///
/// #[derive(Debug)]
/// struct Opaque;
/// impl AllocatorImpl for Opaque {
///     fn mem_type(&self) -> &str { "MyOpaqueMemory" }
/// }
/// let a = Allocator::new(Opaque);
/// // No `alloc`: the default refuses with a typed error.
/// assert!(a.alloc(100, None).is_err());
/// ```
pub trait AllocatorImpl: Any + Send + Sync + fmt::Debug {
    /// The memory type string (`mem_type`), e.g. `"SystemMemory"`, `"fd"`.
    fn mem_type(&self) -> &str;

    /// The allocator's flags.
    fn flags(&self) -> AllocatorFlags {
        AllocatorFlags::empty()
    }

    /// What this kind of allocator can do. Custom allocators say nothing
    /// unless they override it.
    fn caps(&self) -> AllocatorCaps {
        AllocatorCaps::empty()
    }

    /// This allocator as a [`PhysMemoryAllocator`],
    /// if it is one (GStreamer's interface check). Default: no.
    fn as_phys(&self) -> Option<&dyn PhysMemoryAllocator> {
        None
    }

    /// Allocate `size` visible bytes with `params` (already validated). The
    /// default refuses: allocators such as the fd allocator need more than a
    /// size and offer their own constructors.
    fn alloc(&self, size: usize, params: &AllocationParams) -> Result<MemoryParts> {
        let _ = (size, params);
        Err(Error::Unsupported {
            mem_type: self.mem_type().to_owned(),
            operation: "alloc",
        })
    }
}

bitflags! {
    /// What an allocator kind can do: one value per kind, which
    /// [`probe`](crate::probe) and callers read instead of restating it.
    /// The typed handles expose it as a constant (`ShmAllocator::CAPS`),
    /// so it is known even where the kind is not available.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct AllocatorCaps: u32 {
        /// Allocates from a size alone ([`Allocator::alloc`]).
        const PLAIN_ALLOC = 1 << 0;
        /// Its memories carry an fd (`is_fd_memory`).
        const FD_BACKED = 1 << 1;
        /// Its memories are dma-bufs (`is_dmabuf_memory`).
        const DMABUF = 1 << 2;
        /// Its memories are physically contiguous.
        const CONTIGUOUS = 1 << 3;
    }
}

/// A shared handle to an allocator (`GstAllocator*`). Cloning is a reference
/// count increment.
#[derive(Clone)]
pub struct Allocator(Arc<dyn AllocatorImpl>);

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Allocator").field(&self.0).finish()
    }
}

impl Allocator {
    /// What this allocator can do.
    pub fn caps(&self) -> AllocatorCaps {
        self.0.caps()
    }

    /// Wrap an implementation in a handle.
    pub fn new(imp: impl AllocatorImpl) -> Self {
        Allocator(Arc::new(imp))
    }

    /// The memory type string of this allocator.
    pub fn mem_type(&self) -> &str {
        self.0.mem_type()
    }

    /// The allocator's flags.
    pub fn flags(&self) -> AllocatorFlags {
        self.0.flags()
    }

    /// Allocate a memory of `size` visible bytes (`gst_allocator_alloc`).
    /// `None` params means all zeros.
    ///
    /// # Errors
    /// [`Error::InvalidAlign`] when `params.align` is not `2^n − 1`,
    /// [`Error::Unsupported`] when the allocator has no plain `alloc`,
    /// [`Error::BadAllocation`] when the implementation returned fewer
    /// visible bytes than `size`, and whatever the implementation reports
    /// (overflow, out of memory, ...).
    pub fn alloc(&self, size: usize, params: Option<&AllocationParams>) -> Result<Memory> {
        let default = AllocationParams::default();
        let params = params.unwrap_or(&default);
        params.validate()?;
        if self.ptr_eq(Allocator::system_ref()) {
            // The common case, without the generic path's virtual calls.
            return super::system::alloc_system(size, params);
        }
        let parts = self.0.alloc(size, params)?;
        // The memory is made with `self` as its allocator, so only its
        // size can disagree with the request (its region is checked
        // against its maxsize by `from_parts`).
        if parts.size < size {
            return Err(Error::BadAllocation {
                mem_type: self.mem_type().to_owned(),
                requested: size,
                got: parts.size,
            });
        }
        Memory::from_parts(self, parts)
    }

    /// Allocate `size` bytes and have `init` write every visible byte
    /// before the memory exists: a write-once allocation, for a producer
    /// that fills the whole memory anyway. System memory is then not
    /// zeroed first (its prefix and padding are); other allocators' memory
    /// is allocated as usual and written over. `init` writes through a
    /// [`WriteCursor`](crate::system::WriteCursor), front to back.
    ///
    /// # Errors
    /// Those of [`alloc`](Allocator::alloc); `init`'s own error;
    /// [`Error::Uninitialised`] when `init` returned without writing every
    /// visible byte (no memory is made and nothing leaks).
    pub fn alloc_with(
        &self,
        size: usize,
        params: Option<&AllocationParams>,
        init: impl FnOnce(&mut crate::system::WriteCursor<'_>) -> Result<()>,
    ) -> Result<Memory> {
        let default = AllocationParams::default();
        let params = params.unwrap_or(&default);
        params.validate()?;
        let mut init = Some(init);
        let mut call = |w: &mut crate::system::WriteCursor<'_>| match init.take() {
            Some(f) => f(w),
            None => Ok(()),
        };
        if self.ptr_eq(Allocator::system_ref()) {
            return crate::system::alloc_with_system(size, params, &mut call);
        }
        if self.is::<crate::system::SystemAllocator>() {
            // Another instance of the system allocator.
            let (block, maxsize, align) =
                crate::system::alloc_written(size, params, &mut call, None)?;
            let parts = MemoryParts::system(block, maxsize)
                .flags(params.flags)
                .align(align)
                .region(params.prefix, size);
            return Memory::from_parts(self, parts);
        }
        let mut mem = self.alloc(size, Some(params))?;
        if mem.size() != size {
            // A custom allocator may give more visible bytes: keep `size`.
            mem.resize(..size)?;
        }
        {
            let mut map = mem.map_mut()?;
            crate::system::write_over(&mut map, &mut call)?;
        }
        Ok(mem)
    }

    /// The implementation, if it is a `T`.
    pub fn downcast_ref<T: AllocatorImpl>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref::<T>()
    }

    /// Whether the implementation is a `T`.
    pub fn is<T: AllocatorImpl>(&self) -> bool {
        self.downcast_ref::<T>().is_some()
    }

    /// The implementation.
    pub(crate) fn inner(&self) -> &dyn AllocatorImpl {
        &*self.0
    }

    /// Whether two handles point at the same allocator.
    pub fn ptr_eq(&self, other: &Allocator) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The system allocator registered as `"SystemMemory"` at first use.
    pub fn system() -> Allocator {
        SYSTEM.clone()
    }

    /// The system allocator without taking a reference (for the crate's
    /// own hot paths, which only need to borrow it).
    #[inline]
    pub(crate) fn system_ref() -> &'static Allocator {
        &SYSTEM
    }

    /// Look an allocator up by name; `None` gives the default allocator
    /// (`gst_allocator_find`).
    ///
    /// ```
    /// use mediamem::Allocator;
    /// let sys = Allocator::find(Some("SystemMemory")).unwrap();
    /// assert_eq!(sys.mem_type(), "SystemMemory");
    /// assert!(Allocator::find(Some("no-such-allocator")).is_none());
    /// ```
    pub fn find(name: Option<&str>) -> Option<Allocator> {
        let reg = registry().read().unwrap_or_else(PoisonError::into_inner);
        match name {
            None => Some(reg.default.clone()),
            Some(n) => reg.by_name.get(n).cloned(),
        }
    }

    /// The default allocator (`find(None)`).
    pub fn default_allocator() -> Allocator {
        registry()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .default
            .clone()
    }

    /// Register `allocator` under `name` (`gst_allocator_register`);
    /// an allocator already registered under that name is replaced.
    pub fn register(name: &str, allocator: Allocator) {
        registry()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .insert(name.to_owned(), allocator);
    }

    /// Register `allocator` under `name` unless that name is taken, and
    /// return the registered one either way (the `init_once` pattern).
    pub fn register_once(name: &str, make: impl FnOnce() -> Allocator) -> Allocator {
        let mut reg = registry().write().unwrap_or_else(PoisonError::into_inner);
        reg.by_name
            .entry(name.to_owned())
            .or_insert_with(make)
            .clone()
    }

    /// Make `allocator` the default (`gst_allocator_set_default`). It is not
    /// registered by name.
    pub fn set_default(allocator: Allocator) {
        registry()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .default = allocator;
    }

    /// Every registered allocator, by name.
    pub fn registered() -> Vec<(String, Allocator)> {
        registry()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_name
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A typed handle for an allocator kind: a newtype over [`Allocator`]
/// that derefs to it, with `allocator()` and a private `imp()` giving the
/// implementation. With `, new` it also gets `new()` (a fresh `$imp`
/// from `Default`) and `Default`.
macro_rules! allocator_handle {
    ($(#[$meta:meta])* $name:ident => $imp:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name($crate::Allocator);

        impl From<$name> for $crate::Allocator {
            fn from(handle: $name) -> $crate::Allocator {
                handle.0
            }
        }

        impl AsRef<$crate::Allocator> for $name {
            fn as_ref(&self) -> &$crate::Allocator {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = $crate::Allocator;
            fn deref(&self) -> &$crate::Allocator {
                &self.0
            }
        }

        impl $name {
            /// What this kind of allocator can do (also when it is not
            /// available on this machine).
            pub const CAPS: $crate::allocator::AllocatorCaps = <$imp>::CAPS;

            /// The generic allocator handle.
            pub fn allocator(&self) -> &$crate::Allocator {
                &self.0
            }

            /// The typed handle of `allocator`, if it is of this kind.
            pub fn from_allocator(allocator: $crate::Allocator) -> Option<Self> {
                allocator.is::<$imp>().then_some($name(allocator))
            }

            /// The implementation this handle was made with.
            #[allow(dead_code)]
            fn imp(&self) -> &$imp {
                self.0
                    .downcast_ref::<$imp>()
                    .expect(concat!(stringify!($name), " always wraps its own implementation"))
            }
        }
    };
    ($(#[$meta:meta])* $name:ident => $imp:ty, new) => {
        $crate::allocator::allocator_handle! { $(#[$meta])* $name => $imp }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            /// A new allocator of this kind (GStreamer's `*_allocator_new`).
            pub fn new() -> Self {
                $name($crate::Allocator::new(<$imp>::default()))
            }
        }
    };
}
pub(crate) use allocator_handle;

/// Name under which the system allocator is registered.
pub const ALLOCATOR_SYSMEM: &str = "SystemMemory";

struct Registry {
    by_name: BTreeMap<String, Allocator>,
    default: Allocator,
}

static SYSTEM: LazyLock<Allocator> = LazyLock::new(|| Allocator::new(SystemAllocator));

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
        let sys = Allocator::system();
        let mut by_name = BTreeMap::new();
        by_name.insert(ALLOCATOR_SYSMEM.to_owned(), sys.clone());
        RwLock::new(Registry {
            by_name,
            default: sys,
        })
    });
    &REGISTRY
}

/// An allocator that knows the physical address of its memories
/// (`GstPhysMemoryAllocator`; implemented by [`HugePageAllocator`](crate::HugePageAllocator)
/// and [`CmaHeapAllocator`](crate::phys::CmaHeapAllocator)).
pub trait PhysMemoryAllocator: AllocatorImpl {
    /// The physical address of the first byte of the block of `mem` (a
    /// memory of this allocator), or `None` when it is not known.
    fn block_phys_addr(&self, mem: &Memory) -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_masks() {
        for ok in [0usize, 1, 3, 7, 63, 4095, usize::MAX] {
            check_align_mask(ok).unwrap();
        }
        for bad in [2usize, 5, 6, 10, 4096] {
            assert!(matches!(
                check_align_mask(bad),
                Err(Error::InvalidAlign { align }) if align == bad
            ));
        }
    }

    #[test]
    fn flag_values() {
        assert_eq!(AllocatorFlags::CUSTOM_ALLOC.bits(), 16);
        assert_eq!(AllocatorFlags::NO_COPY.bits(), 32);
        assert_eq!(AllocatorFlags::LAST.bits(), 0x100000);
    }

    #[test]
    fn system_is_registered_and_default() {
        let found = Allocator::find(Some(ALLOCATOR_SYSMEM)).unwrap();
        assert!(found.ptr_eq(&Allocator::system()));
        assert!(found.is::<SystemAllocator>());
        assert_eq!(found.mem_type(), "SystemMemory");
    }
}
