//! The machine's limits, measured inside the side-by-side run (a child process of its own, before the
//! systems' jobs), so that every row can be set against what this CPU could do at best:
//!
//! - read bandwidth: `threads` threads summing their share of a 1 GiB buffer (far larger than any cache),
//!   the best of several passes. Decoding reads every weight of the language model (and the KV cache) once
//!   per token, so bandwidth / bytes per token is its ceiling.
//! - multiply peaks: `threads` threads running a register-tiled loop of the instructions a GEMM's inner
//!   loop is made of, operands loaded from L1 (so nothing is hoisted out of the loop): f32 FMA (`vfmadd`
//!   on ymm with AVX2+FMA, on zmm with AVX-512F) and int8 u8×i8 products (AVX2: `vpmaddubsw`, `vpmaddwd`
//!   and `vpaddd`, the sequence ggml's and our AVX2 kernels use; AVX-512 VNNI: `vpdpbusd` on zmm).
//!   AVX-VNNI (`vpdpbusd` on ymm, VEX) is not measured: the machine this was written on lacks it, so the
//!   code would be untested. Prefill and vision (matrix products) are set against these.
//!
//! These are loop peaks, not a model of the CPU: a real GEMM also moves data and converts types, so 100% is
//! out of reach; the figure says how far a row is from the machine, and which limit it is nearer to.
//!
//! The SIMD loops are the only `unsafe` here (unaligned loads from a slice whose bounds are checked
//! first, and calls of `#[target_feature]` functions after run-time detection).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

use serde_json::{json, Value};

/// Bytes the bandwidth test streams per pass (1 GiB: ~30x the L3 of a large desktop part).
const BW_BYTES: usize = 1 << 30;
const BW_PASSES: usize = 8;
/// Seconds each peak loop aims to run (after a short calibration); the best of `PEAK_TRIES` is kept.
const PEAK_SECONDS: f64 = 0.25;
const PEAK_TRIES: usize = 3;

/// Sums a slice of words: a plain reduction, which the compiler vectorizes and interleaves into a pure
/// load stream. The earlier form (an array of 8 accumulators over `chunks_exact(8)`) compiled, with
/// `-C target-cpu=native` on an AMD Zen 4, into a loop that ran at 8-10 GB/s where this one and the
/// Haswell build of either read 33-58 GB/s (2 threads, same machine, same minute): the AVX-512 class runs'
/// bandwidth rows were then set against a limit below what decoding itself moved.
fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

/// Read bandwidth in GB/s (1e9 bytes) of `threads` threads streaming disjoint parts of one large buffer.
pub fn read_bandwidth(threads: usize) -> f64 {
    let threads = threads.max(1);
    let words = BW_BYTES / 8;
    // Written once (not calloc's shared zero page), so every page is resident before timing.
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let part = words.div_ceil(threads);
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    let mut best = 0.0f64;
    std::thread::scope(|s| {
        for chunk in buf.chunks(part) {
            let (start, end) = (&start, &end);
            s.spawn(move || {
                for _ in 0..BW_PASSES {
                    start.wait();
                    black_box(sum_words(black_box(chunk)));
                    end.wait();
                }
            });
        }
        for _ in 0..BW_PASSES {
            start.wait();
            let t = Instant::now();
            end.wait();
            best = best.max((words * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    });
    best
}

/// Runs `kernel(iters)` on `threads` threads at once; returns the best rate (operations per second / 1e9)
/// over `PEAK_TRIES`, where one call performs `ops_per_iter * iters` operations.
fn peak(threads: usize, ops_per_iter: f64, kernel: fn(usize) -> f32) -> f64 {
    let threads = threads.max(1);
    // Calibrate on one thread: iterations for about PEAK_SECONDS.
    let probe = 1 << 20;
    let t = Instant::now();
    black_box(kernel(probe));
    let per_iter = t.elapsed().as_secs_f64() / probe as f64;
    let iters = ((PEAK_SECONDS / per_iter.max(1e-12)) as usize).clamp(probe, 1 << 32);
    let mut best = 0.0f64;
    for _ in 0..PEAK_TRIES {
        let barrier = Barrier::new(threads);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    black_box(kernel(iters));
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max(ops_per_iter * iters as f64 * threads as f64 / secs / 1e9);
    }
    best
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Operand buffer: 64 rows of 64 bytes (4 KiB, L1-resident), cycled through by the loops.
    const ROWS: usize = 64;
    const ROW_BYTES: usize = 64;

    fn operand() -> Vec<u8> {
        (0..ROWS * ROW_BYTES).map(|i| (i * 37 % 127) as u8).collect()
    }

    fn f32_operand() -> Vec<f32> {
        (0..ROWS * ROW_BYTES / 4).map(|i| (i % 17) as f32 * 1e-4).collect()
    }

    /// f32 FMA on ymm: 2 operand rows × 4 broadcast weights = 8 independent accumulators (16 FLOP per lane
    /// per iteration: 8 FMAs × 8 lanes × 2 = 128 FLOP).
    #[target_feature(enable = "avx2,fma")]
    fn fma_ymm(iters: usize, a: &[f32]) -> f32 {
        assert!(a.len() >= ROWS * 16);
        let w = [
            _mm256_set1_ps(0.5),
            _mm256_set1_ps(0.25),
            _mm256_set1_ps(0.125),
            _mm256_set1_ps(0.0625),
        ];
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in 0..iters {
            let r = (i % ROWS) * 16;
            // SAFETY: r + 16 <= ROWS * 16 <= a.len() (asserted above): both 8-float loads are in bounds.
            let (a0, a1) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(r)),
                    _mm256_loadu_ps(a.as_ptr().add(r + 8)),
                )
            };
            for j in 0..4 {
                acc[j] = _mm256_fmadd_ps(a0, w[j], acc[j]);
                acc[4 + j] = _mm256_fmadd_ps(a1, w[j], acc[4 + j]);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        _mm256_cvtss_f32(s)
    }

    /// f32 FMA on zmm: 3 operand rows × 4 weights = 12 accumulators (12 FMAs × 16 lanes × 2 = 384 FLOP).
    #[target_feature(enable = "avx512f")]
    fn fma_zmm(iters: usize, a: &[f32]) -> f32 {
        assert!(a.len() >= ROWS * 16 + 32);
        let w = [
            _mm512_set1_ps(0.5),
            _mm512_set1_ps(0.25),
            _mm512_set1_ps(0.125),
            _mm512_set1_ps(0.0625),
        ];
        let mut acc = [_mm512_setzero_ps(); 12];
        for i in 0..iters {
            let r = (i % ROWS) * 16;
            // SAFETY: r + 48 <= ROWS * 16 + 32 <= a.len() (asserted above): the three 16-float loads are in bounds.
            let av = unsafe {
                [
                    _mm512_loadu_ps(a.as_ptr().add(r)),
                    _mm512_loadu_ps(a.as_ptr().add(r + 16)),
                    _mm512_loadu_ps(a.as_ptr().add(r + 32)),
                ]
            };
            for (k, x) in av.iter().enumerate() {
                for j in 0..4 {
                    acc[4 * k + j] = _mm512_fmadd_ps(*x, w[j], acc[4 * k + j]);
                }
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// int8 on ymm, AVX2: acc += vpmaddwd(vpmaddubsw(a_i, w_j), 1): 2 rows × 3 weights = 6 accumulators,
    /// each step 32 u8×i8 products (6 × 32 × 2 = 384 operations per iteration).
    #[target_feature(enable = "avx2")]
    fn int8_ymm(iters: usize, a: &[u8]) -> f32 {
        assert!(a.len() >= ROWS * ROW_BYTES);
        let w = [_mm256_set1_epi8(3), _mm256_set1_epi8(-5), _mm256_set1_epi8(7)];
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 6];
        for i in 0..iters {
            let r = (i % ROWS) * ROW_BYTES;
            // SAFETY: r + 64 <= ROWS * ROW_BYTES <= a.len() (asserted above): both 32-byte loads are in bounds.
            let av = unsafe {
                [
                    _mm256_loadu_si256(a.as_ptr().add(r).cast()),
                    _mm256_loadu_si256(a.as_ptr().add(r + 32).cast()),
                ]
            };
            for (k, x) in av.iter().enumerate() {
                for j in 0..3 {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*x, w[j]), ones);
                    acc[3 * k + j] = _mm256_add_epi32(acc[3 * k + j], p);
                }
            }
        }
        let mut s = _mm256_setzero_si256();
        for v in acc {
            s = _mm256_add_epi32(s, v);
        }
        _mm256_cvtsi256_si32(s) as f32
    }

    /// int8 on zmm, AVX-512 VNNI: acc = vpdpbusd(acc, a_i, w_j): 3 rows × 4 weights = 12 accumulators, each
    /// step 64 u8×i8 products (12 × 64 × 2 = 1536 operations per iteration).
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn vnni_zmm(iters: usize, a: &[u8]) -> f32 {
        assert!(a.len() >= ROWS * ROW_BYTES + 128);
        let w = [
            _mm512_set1_epi8(3),
            _mm512_set1_epi8(-5),
            _mm512_set1_epi8(7),
            _mm512_set1_epi8(-9),
        ];
        let mut acc = [_mm512_setzero_si512(); 12];
        for i in 0..iters {
            let r = (i % ROWS) * ROW_BYTES;
            // SAFETY: r + 192 <= ROWS * ROW_BYTES + 128 <= a.len() (asserted above): the loads are in bounds.
            let av = unsafe {
                [
                    _mm512_loadu_si512(a.as_ptr().add(r).cast()),
                    _mm512_loadu_si512(a.as_ptr().add(r + 64).cast()),
                    _mm512_loadu_si512(a.as_ptr().add(r + 128).cast()),
                ]
            };
            for (k, x) in av.iter().enumerate() {
                for j in 0..4 {
                    acc[4 * k + j] = _mm512_dpbusd_epi32(acc[4 * k + j], *x, w[j]);
                }
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s) as f32
    }

    fn padded<T: Clone>(mut v: Vec<T>, extra: usize) -> Vec<T> {
        let fill = v[0].clone();
        v.resize(v.len() + extra, fill);
        v
    }

    pub fn run_fma_ymm(iters: usize) -> f32 {
        let a = f32_operand();
        assert!(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { fma_ymm(iters, &a) }
    }
    pub fn run_fma_zmm(iters: usize) -> f32 {
        let a = padded(f32_operand(), 32);
        assert!(std::arch::is_x86_feature_detected!("avx512f"));
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { fma_zmm(iters, &a) }
    }
    pub fn run_int8_ymm(iters: usize) -> f32 {
        let a = operand();
        assert!(std::arch::is_x86_feature_detected!("avx2"));
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { int8_ymm(iters, &a) }
    }
    pub fn run_vnni_zmm(iters: usize) -> f32 {
        let a = padded(operand(), 128);
        assert!(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni"));
        // SAFETY: the CPU has AVX-512F and AVX-512 VNNI (checked just above).
        unsafe { vnni_zmm(iters, &a) }
    }
}

/// Measures every limit this CPU has (the child job "limits"): GB/s and GFLOP/s or GOP/s (1e9 per second).
pub fn measure(threads: usize) -> Value {
    let bw = read_bandwidth(threads);
    let mut v = json!({ "threads": threads, "read_gbs": bw });
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx2+fma" => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512vnni" => {
                std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            _ => false,
        };
        if has("avx2+fma") {
            v["f32_avx2_gflops"] = json!(peak(threads, 128.0, x86::run_fma_ymm));
            v["int8_avx2_gops"] = json!(peak(threads, 384.0, x86::run_int8_ymm));
        }
        if has("avx512f") {
            v["f32_avx512_gflops"] = json!(peak(threads, 384.0, x86::run_fma_zmm));
        }
        if has("avx512vnni") {
            v["int8_vnni512_gops"] = json!(peak(threads, 1536.0, x86::run_vnni_zmm));
        }
    }
    v
}
