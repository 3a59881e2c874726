//! The safe ggml layer: a small graph against a plain Rust f32 computation, and shape errors that would be
//! ggml aborts if they reached ggml.
mod common;

use internvl::ggml::{dequantize, quantize, Backend, Context, GgmlError, Sched};
use internvl::gguf::GgmlType;

/// Deterministic values in [-1, 1).
fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; use a series/continued fraction via libm-free approach:
    // erf(x) = 2/sqrt(pi) * sum_{n} (-1)^n x^(2n+1) / (n! (2n+1)), converges fine for |x| < 4.
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while n < 200.0 {
        let t = term / (2.0 * n + 1.0);
        sum += t;
        n += 1.0;
        term *= -x * x / n;
        if t.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn graph_matches_plain_rust() {
    // y = rms_norm(gelu_erf(W·x + b)) with W [k=32 in, m=24 out], x: 5 tokens.
    let (k, m, n) = (32usize, 24usize, 5usize);
    let w = vals(k * m, 1);
    let x = vals(k * n, 2);
    let b = vals(m, 3);
    let eps = 1e-6f32;

    let backend = Backend::cpu(2).unwrap();
    let ctx = Context::new(64, 1).unwrap();
    let tw = ctx.new_f32(&[k, m]).unwrap().set_name("w");
    let tx = ctx.new_f32(&[k, n]).unwrap().set_name("x").set_input();
    let tb = ctx.new_f32(&[m]).unwrap().set_name("b");
    let _wbuf = backend.alloc_ctx_tensors(&ctx).unwrap();
    tw.set_f32(&w).unwrap();
    tx.set_f32(&x).unwrap();
    tb.set_f32(&b).unwrap();

    let ctx2 = Context::new(64, 1).unwrap();
    let y = ctx2.linear(tx, tw, Some(tb)).unwrap();
    let y = ctx2.gelu_erf(y).unwrap();
    let y = ctx2.rms_norm(y, eps).unwrap().set_name("out").set_output();
    let mut g = ctx2.new_graph().unwrap();
    g.build_forward(y).unwrap();
    let mut sched = Sched::new(&[&backend], 64).unwrap();
    sched.alloc(&g).unwrap();
    sched.compute(&g).unwrap();
    let got = y.get_f32().unwrap();
    assert_eq!(got.len(), m * n);

    let mut max_diff = 0f64;
    for t in 0..n {
        let mut h = vec![0f64; m];
        for o in 0..m {
            let mut acc = b[o] as f64;
            for i in 0..k {
                acc += w[o * k + i] as f64 * x[t * k + i] as f64;
            }
            h[o] = 0.5 * acc * (1.0 + erf(acc / 2f64.sqrt()));
        }
        let ms = h.iter().map(|v| v * v).sum::<f64>() / m as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        for o in 0..m {
            // NaN-propagating (f64::max would drop a NaN and the bound below would pass).
            max_diff = common::nan_max([max_diff, (h[o] * r - got[t * m + o] as f64).abs()]);
        }
    }
    assert!(max_diff < 1e-4, "max |diff| {max_diff}");
}

#[test]
fn shape_errors_are_errors_not_aborts() {
    let ctx = Context::new(16, 1).unwrap();
    let a = ctx.new_f32(&[8, 4]).unwrap();
    let b = ctx.new_f32(&[7, 4]).unwrap();
    assert!(matches!(ctx.mul_mat(a, b), Err(GgmlError::Shape { op: "mul_mat", .. })));
    assert!(matches!(ctx.add(a, b), Err(GgmlError::Shape { op: "add", .. })));
    assert!(matches!(ctx.reshape(a, &[5, 5]), Err(GgmlError::Shape { .. })));
    assert!(matches!(ctx.view(a, &[8, 5], &[32], 0), Err(GgmlError::Shape { .. })));
    assert!(matches!(ctx.permute(a, [0, 0, 1, 2]), Err(GgmlError::Shape { .. })));
    assert!(
        ctx.new_tensor(GgmlType::Q8_0, &[31, 2]).is_err(),
        "row not a multiple of 32"
    );
    assert!(ctx.new_f32(&[0]).is_err());
    assert!(ctx.new_f32(&[1, 1, 1, 1, 1]).is_err());
    // Reading an unallocated tensor is an error, not a NULL dereference.
    assert!(a.get_f32().is_err());
}

#[test]
fn context_capacity_is_enforced() {
    let ctx = Context::new(3, 0).unwrap();
    for _ in 0..3 {
        ctx.new_f32(&[4]).unwrap();
    }
    assert!(matches!(ctx.new_f32(&[4]), Err(GgmlError::ContextFull { .. })));
    assert!(ctx.new_graph().is_err(), "no graph was reserved");
}

#[test]
fn quantize_roundtrip_error_is_ggml_like() {
    let n_per_row = 256;
    let src: Vec<f32> = vals(n_per_row * 64, 7).iter().map(|v| v * 0.05).collect();
    for (ty, max_rel_rms) in [
        (GgmlType::F16, 1e-3),
        (GgmlType::Q8_0, 0.006),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::Q6_K, 0.02),
    ] {
        let q = quantize(ty, &src, n_per_row).unwrap();
        assert_eq!(q.len(), ty.row_size(n_per_row).unwrap() * 64);
        let back = dequantize(ty, &q, src.len()).unwrap();
        let num: f64 = src.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = src.iter().map(|a| (*a as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        assert!(rel < max_rel_rms, "{}: relative RMS {rel}", ty.name());
    }
    assert!(
        quantize(GgmlType::Q4_0, &src[..100], 100).is_err(),
        "100 is not a multiple of 32"
    );
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 5], 32).is_err());
}

#[test]
fn version_is_checked() {
    internvl::ggml::check_version().unwrap();
    assert!(internvl::ggml::version().starts_with(internvl::ggml::EXPECTED_GGML_VERSION));
}
