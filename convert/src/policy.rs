//! The quantization policy: which ggml type each tensor is stored in.
//!
//! - Norm weights and biases, all biases, layer scales (ls1/ls2), the class embedding and the position
//!   table stay **f32** (small, and precision-critical: they are added or multiplied element-wise).
//! - The patch embedding (a Conv2d kernel with 14-element rows) is **f16** (f32 when the vision type is
//!   f32), as llama.cpp does.
//! - Linear weights take the part's type: `--vision-type` for the ViT and the projector (the mmproj
//!   file), `--llm-type` for the LLM; the token embedding takes `--embd-type`, the lm_head
//!   `--output-type` (both default to the LLM type). Every override defaults to `--type`.
//! - Fallback: a row length (ggml `ne[0]`) that is not a whole number of the type's blocks cannot be
//!   quantized to it. K-quants (256-element super-blocks; Qwen2's 896 is 3.5 of them) fall back to
//!   **q8_0** (8.5 bits per weight, more than any K-quant offered here) when the row fits blocks of 32,
//!   and to **f16** otherwise; the 32-element block types fall back to **f16**. The converter reports
//!   every tensor that fell back.

use internvl::gguf::GgmlType;
use internvl::names::{Part, Role, TensorSpec};

/// The types `--type` and the overrides accept (the runtime's list of what the converter writes).
pub const ALLOWED: [GgmlType; 10] = internvl::model::CONVERT_TYPES;

/// Parses a type name of `ALLOWED` (case-insensitive: "q6_k" and "Q6_K" both work).
pub fn parse_type(s: &str) -> Result<GgmlType, String> {
    match GgmlType::from_name(s) {
        Some(t) if ALLOWED.contains(&t) => Ok(t),
        _ => Err(format!(
            "unsupported type {s:?}; choose one of {}",
            ALLOWED
                .iter()
                .map(|t| t.name().to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for a base type.
pub fn llama_ftype(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q6_K => 18,
        GgmlType::IQ4_NL => 25,
        GgmlType::BF16 => 32,
        // Not offered by the CLI; LLAMA_FTYPE_GUESSED.
        _ => 1024,
    }
}

/// The requested types: `--type` and the per-part overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeChoice {
    pub base: GgmlType,
    pub vision: Option<GgmlType>,
    pub llm: Option<GgmlType>,
    pub embd: Option<GgmlType>,
    pub output: Option<GgmlType>,
}

impl TypeChoice {
    pub fn uniform(t: GgmlType) -> Self {
        TypeChoice {
            base: t,
            vision: None,
            llm: None,
            embd: None,
            output: None,
        }
    }
    pub fn vision_type(&self) -> GgmlType {
        self.vision.unwrap_or(self.base)
    }
    pub fn llm_type(&self) -> GgmlType {
        self.llm.unwrap_or(self.base)
    }
    pub fn embd_type(&self) -> GgmlType {
        self.embd.unwrap_or(self.llm_type())
    }
    pub fn output_type(&self) -> GgmlType {
        self.output.unwrap_or(self.llm_type())
    }

    /// One line for `internvl.converter.recipe`: the effective types and the fixed rules.
    pub fn recipe(&self) -> String {
        format!(
            "type={} vision={} llm={} embd={} output={}; f32: norms, biases, layer scales, class and position \
             embeddings; patch_embd: f16 (f32 if vision=f32); fallback when a row is not whole blocks: k-quant -> \
             q8_0 -> f16, 32-blocks -> f16",
            self.base,
            self.vision_type(),
            self.llm_type(),
            self.embd_type(),
            self.output_type()
        )
    }
}

/// The type chosen for one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What the policy asked for before the block-size check.
    pub requested: GgmlType,
    /// What is stored.
    pub chosen: GgmlType,
}

impl Decision {
    pub fn fell_back(&self) -> bool {
        self.requested != self.chosen
    }
}

/// The type the policy requests for a tensor of this role and part (before the fallback).
pub fn requested_type(part: Part, role: Role, choice: &TypeChoice) -> GgmlType {
    match role {
        Role::Norm | Role::Bias | Role::LayerScale | Role::ClassEmbd | Role::PosEmbd => GgmlType::F32,
        Role::PatchEmbd => {
            if choice.vision_type() == GgmlType::F32 {
                GgmlType::F32
            } else {
                GgmlType::F16
            }
        }
        Role::Matrix => match part {
            Part::Vision | Part::Projector => choice.vision_type(),
            Part::Llm => choice.llm_type(),
        },
        Role::TokenEmbd => choice.embd_type(),
        Role::Output => choice.output_type(),
    }
}

/// The stored type for `requested` with rows of `row_len` elements (see the module docs).
pub fn fit_row(requested: GgmlType, row_len: usize) -> GgmlType {
    if requested.row_size(row_len).is_some() {
        return requested;
    }
    if requested.block_size() > 32 && GgmlType::Q8_0.row_size(row_len).is_some() {
        return GgmlType::Q8_0;
    }
    GgmlType::F16
}

/// The decision for one tensor of the model.
pub fn decide(spec: &TensorSpec, choice: &TypeChoice) -> Decision {
    let requested = requested_type(spec.part, spec.role, choice);
    let row_len = spec.ne.first().copied().unwrap_or(1);
    Decision {
        requested,
        chosen: fit_row(requested, row_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use internvl::hparams::Hparams;
    use internvl::names::tensor_specs;

    #[test]
    fn parse_accepts_only_the_offered_types() {
        assert_eq!(parse_type("q6_k"), Ok(GgmlType::Q6_K));
        assert_eq!(parse_type("Q8_0"), Ok(GgmlType::Q8_0));
        assert_eq!(parse_type("iq4_nl"), Ok(GgmlType::IQ4_NL));
        assert!(parse_type("q2_k").unwrap_err().contains("choose one of"));
        assert!(parse_type("nope").is_err());
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fit_row(GgmlType::Q6_K, 1024), GgmlType::Q6_K);
        assert_eq!(fit_row(GgmlType::Q6_K, 896), GgmlType::Q8_0);
        assert_eq!(fit_row(GgmlType::Q6_K, 112), GgmlType::F16);
        assert_eq!(fit_row(GgmlType::Q4_0, 896), GgmlType::Q4_0);
        assert_eq!(fit_row(GgmlType::Q4_0, 112), GgmlType::F16);
        assert_eq!(fit_row(GgmlType::BF16, 14), GgmlType::BF16);
    }

    #[test]
    fn full_model_q6_k_falls_back_only_on_896_rows() {
        let choice = TypeChoice::uniform(GgmlType::Q6_K);
        for s in tensor_specs(&Hparams::internvl2_1b()) {
            let d = decide(&s, &choice);
            match s.role {
                Role::Matrix | Role::TokenEmbd | Role::Output => {
                    let row = s.ne[0];
                    let want = if row % 256 == 0 { GgmlType::Q6_K } else { GgmlType::Q8_0 };
                    assert_eq!(d.chosen, want, "{}", s.gguf_name);
                }
                Role::PatchEmbd => assert_eq!(d.chosen, GgmlType::F16),
                _ => assert_eq!(d.chosen, GgmlType::F32, "{}", s.gguf_name),
            }
        }
    }

    #[test]
    fn overrides_apply_per_part() {
        let choice = TypeChoice {
            base: GgmlType::Q4_0,
            vision: Some(GgmlType::Q8_0),
            llm: None,
            embd: Some(GgmlType::F16),
            output: Some(GgmlType::Q6_K),
        };
        assert_eq!(requested_type(Part::Vision, Role::Matrix, &choice), GgmlType::Q8_0);
        assert_eq!(requested_type(Part::Projector, Role::Matrix, &choice), GgmlType::Q8_0);
        assert_eq!(requested_type(Part::Llm, Role::Matrix, &choice), GgmlType::Q4_0);
        assert_eq!(requested_type(Part::Llm, Role::TokenEmbd, &choice), GgmlType::F16);
        assert_eq!(requested_type(Part::Llm, Role::Output, &choice), GgmlType::Q6_K);
        assert_eq!(requested_type(Part::Vision, Role::PatchEmbd, &choice), GgmlType::F16);
        assert_eq!(requested_type(Part::Vision, Role::LayerScale, &choice), GgmlType::F32);
        let f32s = TypeChoice::uniform(GgmlType::F32);
        assert_eq!(requested_type(Part::Vision, Role::PatchEmbd, &f32s), GgmlType::F32);
    }
}
