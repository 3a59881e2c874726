//! Our own CPU kernels and the choice of which run, made once when a model loads.
//!
//! `panels` (q4_0 and q8_0 weights rearranged for SIMD dot products: the ViT's and the language model's
//! products, decoding included), `int8` (int8 matrix products for f16/f32 weights in the ViT and prefill),
//! `attention` (the ViT's attention), `decode_attention` (a decoded token's attention over the f16 KV
//! cache), `prefill_attention` (a prompt chunk's attention over it) and `activation` (the ViT's erf
//! GELU) run as ggml custom nodes (`*_op.rs`, over `crate::ggml::custom`). Their only `unsafe` is the
//! SIMD intrinsics, in one file per instruction set (`avx512.rs`), behind safe functions that check every
//! slice bound first, and the nodes' callbacks, which read ggml's tensors.
//!
//! The user picks `Kernels`; `Kernels::resolve` turns it, with this CPU's features, into a `Choice`
//! (which work goes to our kernels, and the `Isa` they run with). The model stores the choice, the
//! kernels take the `Isa` as an argument (held by `Panels`/`PackedWeights`, passed to attention and
//! GELU): nothing asks the CPU per call.

pub mod activation;
mod activation_op;
pub mod attention;
mod attention_op;
pub mod decode_attention;
mod decode_attention_op;
pub mod int8;
mod int8_op;
mod own_product;
pub mod panels;
mod panels_op;
pub mod prefill_attention;
mod prefill_attention_op;

pub use activation_op::gelu_erf_cpu;
pub use attention_op::vit_attention;
pub use decode_attention_op::decode_attention;
pub use int8_op::linear_int8;
pub use panels_op::linear_panels;
pub use prefill_attention_op::prefill_attention;

use std::fmt;
use std::str::FromStr;

/// Which kernels run the CPU's matrix products, the ViT's attention and its GELU (`--kernels NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The best of ours this CPU runs: `Avx512Vnni` where it has AVX-512 VNNI, else what `Avx2` runs where
    /// it has AVX2 + FMA + F16C, else ggml's kernels for the products and attention and our portable GELU.
    #[default]
    Auto,
    /// Our AVX-512 VNNI kernels for every product whose weights suit them, attention and GELU.
    Avx512Vnni,
    /// What an AVX2 CPU runs (also on a CPU with AVX-512): our AVX2 kernels where we have them, ggml's for
    /// the rest.
    Avx2,
    /// `Avx2` with the q4_0/q8_0 products by AVX-VNNI's `vpdpbusd` on 256-bit registers (Intel since Alder
    /// Lake, AMD since Zen 5). Opt-in, never picked by `Auto`: not yet timed on a CPU that has AVX-VNNI
    /// (its code is tested through `AvxVnniEvex`).
    AvxVnni,
    /// `AvxVnni`'s kernels in their EVEX form (the same instructions on 256-bit registers, as AVX-512 VL +
    /// VNNI encode them): what CPUs with AVX-512 VNNI run to test and time the AVX-VNNI code.
    AvxVnniEvex,
    /// Our portable kernels (plain Rust, no SIMD intrinsics) wherever `Avx512Vnni` runs ours: correct on
    /// every CPU, slow; for testing.
    Portable,
    /// None of ours: ggml's kernels for every product, its flash attention and its GELU (what llama.cpp
    /// runs).
    Ggml,
}

impl Kernels {
    /// Every choice, in the order of `--help`.
    pub const ALL: [Kernels; 7] = [
        Kernels::Auto,
        Kernels::Avx512Vnni,
        Kernels::Avx2,
        Kernels::AvxVnni,
        Kernels::AvxVnniEvex,
        Kernels::Portable,
        Kernels::Ggml,
    ];

    /// The name `--kernels` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Auto => "auto",
            Kernels::Avx512Vnni => "avx512-vnni",
            Kernels::Avx2 => "avx2",
            Kernels::AvxVnni => "avx-vnni",
            Kernels::AvxVnniEvex => "avx-vnni-evex",
            Kernels::Portable => "portable",
            Kernels::Ggml => "ggml",
        }
    }

    /// What runs on this CPU, or why this choice cannot (an instruction set the CPU lacks).
    pub fn resolve(self) -> Result<Choice, KernelsError> {
        let need = |isa: Isa| {
            if isa.runs_here() {
                Ok(isa)
            } else {
                Err(KernelsError::Unsupported { kernels: self, isa })
            }
        };
        Ok(match self {
            Kernels::Auto => Choice::auto(),
            Kernels::Avx512Vnni => Choice::ours(need(Isa::Avx512Vnni)?),
            Kernels::Avx2 => Choice::ours(need(Isa::Avx2)?),
            Kernels::AvxVnni => Choice::ours(need(Isa::AvxVnni)?),
            Kernels::AvxVnniEvex => Choice::ours(need(Isa::AvxVnniEvex)?),
            Kernels::Portable => Choice::ours(Isa::Portable),
            Kernels::Ggml => Choice::GGML,
        })
    }
}

impl From<Isa> for Kernels {
    /// The choice that runs our kernels with `isa` (what the tests compare with the portable path).
    fn from(isa: Isa) -> Kernels {
        match isa {
            Isa::Portable => Kernels::Portable,
            Isa::Avx2 => Kernels::Avx2,
            Isa::AvxVnni => Kernels::AvxVnni,
            Isa::AvxVnniEvex => Kernels::AvxVnniEvex,
            Isa::Avx512Vnni => Kernels::Avx512Vnni,
        }
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernels {
    type Err = KernelsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kernels::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| KernelsError::Unknown(s.to_string()))
    }
}

/// A `Kernels` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelsError {
    #[error("unknown kernels '{0}' (expected auto, avx512-vnni, avx2, avx-vnni, avx-vnni-evex, portable or ggml)")]
    Unknown(String),
    #[error("kernels '{kernels}' need {}, which this CPU lacks (it runs: {})", .isa.features(), Isa::here_list())]
    Unsupported { kernels: Kernels, isa: Isa },
}

/// The instruction set our kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable = 0,
    /// AVX2 with FMA and F16C (x86-64 since Haswell / Zen 1).
    Avx2 = 1,
    /// AVX-512 F, BW and VNNI (x86-64 since Ice Lake / Zen 4).
    Avx512Vnni = 2,
    /// `Avx2`, and AVX-VNNI for the q4_0/q8_0 products (`panels`; every other kernel is `Avx2`'s).
    AvxVnni = 3,
    /// `AvxVnni` with its products' `vpdpbusd` in the EVEX encoding (AVX-512 VL + VNNI): the AVX-VNNI
    /// kernels' source built a second time, so that a CPU with AVX-512 VNNI and without AVX-VNNI (which
    /// no emulator at hand runs: QEMU 10's TCG lacks it) tests that code.
    AvxVnniEvex = 4,
}

impl Isa {
    /// The set whose `as u8` is `id` (node callbacks carry it as a const parameter).
    const fn from_id(id: u8) -> Isa {
        match id {
            1 => Isa::Avx2,
            2 => Isa::Avx512Vnni,
            3 => Isa::AvxVnni,
            4 => Isa::AvxVnniEvex,
            _ => Isa::Portable,
        }
    }

    /// Whether this CPU runs it (the CPU is asked once per process).
    pub fn runs_here(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => cpu().avx2,
            Isa::Avx512Vnni => cpu().avx512_vnni,
            Isa::AvxVnni => cpu().avx2 && cpu().avx_vnni,
            Isa::AvxVnniEvex => cpu().avx2 && cpu().avx512_vnni && cpu().avx512_vl,
        }
    }

    /// The set whose kernels run everything but the q4_0/q8_0 products: `Avx2` for the AVX-VNNI sets
    /// (they differ from it only in `panels`), itself for the others.
    pub fn base(self) -> Isa {
        match self {
            Isa::AvxVnni | Isa::AvxVnniEvex => Isa::Avx2,
            isa => isa,
        }
    }

    /// The name used by `--kernels`, `--timings` and the tests.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::AvxVnni => "avx-vnni",
            Isa::AvxVnniEvex => "avx-vnni-evex",
        }
    }

    /// The CPU features it needs.
    fn features(self) -> &'static str {
        match self {
            Isa::Portable => "nothing",
            Isa::Avx2 => "AVX2, FMA and F16C",
            Isa::Avx512Vnni => "AVX-512 F, BW and VNNI",
            Isa::AvxVnni => "AVX2, FMA, F16C and AVX-VNNI",
            Isa::AvxVnniEvex => "AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI",
        }
    }

    /// Every instruction set this CPU runs, portable first (what the tests run each kernel on).
    pub fn all_here() -> Vec<Isa> {
        [
            Isa::Portable,
            Isa::Avx2,
            Isa::AvxVnni,
            Isa::AvxVnniEvex,
            Isa::Avx512Vnni,
        ]
        .into_iter()
        .filter(|i| i.runs_here())
        .collect()
    }

    /// `all_here` without the sets that run another's kernels outside the q4_0/q8_0 products (`base() !=
    /// self`: the AVX-VNNI ones, which run AVX2's): what the tests and benches of those other kernels run.
    pub fn bases_here() -> Vec<Isa> {
        Isa::all_here().into_iter().filter(|i| i.base() == *i).collect()
    }

    fn here_list() -> String {
        Isa::all_here().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    }
}

/// What runs, decided once at load from `Kernels` and the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The instruction set of our kernels wherever they run (the int8 layouts' products included).
    pub isa: Isa,
    /// q4_0 and q8_0 matrices, the language model's included, go to our panels (otherwise only the
    /// vision tower's, and only when an int8 weight layout asks for our kernels).
    pub panels: bool,
    /// The ViT's attention, and the language model's attention of a decoded token over an f16 KV cache,
    /// by our kernels (otherwise ggml's flash attention).
    pub attention: bool,
    /// The erf GELU by our kernel (otherwise ggml's).
    pub gelu: bool,
}

impl Choice {
    /// None of ours.
    pub const GGML: Choice = Choice {
        isa: Isa::Portable,
        panels: false,
        attention: false,
        gelu: false,
    };

    /// `Kernels::Auto`'s choice on this CPU.
    pub fn auto() -> Choice {
        if Isa::Avx512Vnni.runs_here() {
            Choice::ours(Isa::Avx512Vnni)
        } else if Isa::Avx2.runs_here() {
            Choice::ours(Isa::Avx2)
        } else {
            // Elsewhere (e.g. ARM) ggml's products and flash attention are faster than our portable
            // kernels; our GELU is still faster than ggml's scalar erff.
            Choice {
                isa: Isa::Portable,
                panels: false,
                attention: false,
                gelu: true,
            }
        }
    }

    /// Ours for everything, with `isa`.
    const fn ours(isa: Isa) -> Choice {
        Choice {
            isa,
            panels: true,
            attention: true,
            gelu: true,
        }
    }

    /// Whether any of our kernels runs.
    pub fn any_ours(&self) -> bool {
        *self != Choice::GGML
    }
}

impl fmt::Display for Choice {
    /// E.g. `avx2 (ours: q4_0/q8_0 panels, attention, GELU)` or, on a CPU with neither set, `portable (ours:
    /// GELU; ggml's: q4_0/q8_0 panels, attention)`, for `--timings` and the benchmarks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.any_ours() {
            return f.write_str("ggml (none of ours)");
        }
        let parts = [
            (self.panels, "q4_0/q8_0 panels"),
            (self.attention, "attention"),
            (self.gelu, "GELU"),
        ];
        let list = |ours: bool| {
            let v: Vec<&str> = parts.iter().filter(|p| p.0 == ours).map(|p| p.1).collect();
            v.join(", ")
        };
        let (ours, theirs) = (list(true), list(false));
        write!(f, "{} (ours: {ours}", self.isa.name())?;
        if !theirs.is_empty() {
            write!(f, "; ggml's: {theirs}")?;
        }
        f.write_str(")")
    }
}

/// The CPU's features, asked once.
struct Cpu {
    avx2: bool,
    avx512_vnni: bool,
    avx512_vl: bool,
    avx_vnni: bool,
}

fn cpu() -> &'static Cpu {
    static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            Cpu {
                avx2: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c"),
                avx512_vnni: is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni"),
                avx512_vl: is_x86_feature_detected!("avx512vl"),
                avx_vnni: is_x86_feature_detected!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Cpu {
                avx2: false,
                avx512_vnni: false,
                avx512_vl: false,
                avx_vnni: false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for k in Kernels::ALL {
            assert_eq!(k.name().parse::<Kernels>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        let err = "avx512".parse::<Kernels>().unwrap_err();
        assert!(err.to_string().contains("unknown kernels 'avx512'"), "{err}");
    }

    #[test]
    fn each_choice_resolves_or_names_the_missing_features() {
        for k in Kernels::ALL {
            match k.resolve() {
                Ok(c) => {
                    eprintln!("{k}: {c:?}");
                    assert!(
                        c.isa.runs_here(),
                        "{k} resolved to {:?}, which this CPU cannot run",
                        c.isa
                    );
                    assert_eq!(c.any_ours(), k != Kernels::Ggml, "{k}");
                }
                Err(e) => {
                    eprintln!("{k}: {e}");
                    assert!(
                        matches!(
                            k,
                            Kernels::Avx512Vnni | Kernels::Avx2 | Kernels::AvxVnni | Kernels::AvxVnniEvex
                        ),
                        "{k} failed: {e}"
                    );
                    assert!(e.to_string().contains("which this CPU lacks"), "{e}");
                }
            }
        }
        assert_eq!(Kernels::Portable.resolve().map(|c| c.isa), Ok(Isa::Portable));
        assert_eq!(Kernels::Ggml.resolve(), Ok(Choice::GGML));
        let auto = Kernels::Auto.resolve().expect("auto always resolves");
        // The AVX-VNNI sets are opt-in.
        let best = *Isa::bases_here().last().expect("portable runs everywhere");
        assert_eq!(auto.isa, best, "auto picks the best default instruction set here");
    }
}
