//! The registry in a process where nothing has registered yet (this test
//! binary holds this one test, so its process starts empty).

use mediamem::{Allocator, ShmAllocator};

#[test]
fn shm_init_once_registers_the_shm_allocator() {
    assert!(
        Allocator::find(Some("shm")).is_none(),
        "nothing registered \"shm\" yet in this process"
    );
    ShmAllocator::init_once();
    let found = Allocator::find(Some("shm")).expect("registered by init_once");
    assert!(found.ptr_eq(ShmAllocator::get().allocator()));
}
