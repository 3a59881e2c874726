//! The converter's safetensors reader on arbitrary bytes. The reader works on files (positioned reads,
//! no mmap), so each input is written to one scratch file per process (in /dev/shm when it exists),
//! opened with `Checkpoint::open_files` and every float tensor read in full and in a partial range.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use internvl_fuzz::safetensors::Checkpoint;
use libfuzzer_sys::fuzz_target;

fn scratch_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("internvl-fuzz-st-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch_path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Ok(ck) = Checkpoint::open_files(std::slice::from_ref(path)) else {
        return;
    };
    let mut sink = 0usize;
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    for t in ck.tensors() {
        sink ^= t.n_elements() ^ t.name.len() ^ t.dtype.name().len();
        assert!(ck.get(&t.name).is_some());
        // A reader error (non-float dtype) is fine; a panic is not.
        if let Ok(v) = ck.read_f32(t) {
            assert_eq!(v.len(), t.n_elements());
            sink ^= v.len();
        }
        let n = t.n_elements();
        let half = n / 2;
        if ck.read_f32_range(t, half, n - half, &mut scratch, &mut out).is_ok() {
            sink ^= out.len();
        }
        // Out-of-range requests are refused.
        assert!(ck.read_f32_range(t, n, 1, &mut scratch, &mut out).is_err());
        assert!(ck.read_f32_range(t, usize::MAX, 2, &mut scratch, &mut out).is_err());
    }
    sink ^= ck.paths().len();
    std::hint::black_box(sink);
});
