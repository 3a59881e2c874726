//! The quantization policy: which ggml type each tensor is stored in.
//!
//! - Norm weights and biases, all biases, layer scales (ls1/ls2), the class embedding and the position
//!   table stay **f32** (small, and precision-critical: they are added or multiplied element-wise).
//! - The patch embedding (a Conv2d kernel with 14-element rows) is **f16** (f32 when the vision type is
//!   f32), as llama.cpp does.
//! - Linear weights take the part's type: `--vision-type` for the ViT and the projector (the mmproj
//!   file), `--llm-type` for the LLM; the token embedding takes `--embd-type`, the lm_head
//!   `--output-type` (both default to the LLM type). Every override defaults to `--type`.
//! - The q4_0 recipe (`TypeChoice::with_recipe`, what the command line uses): with `--type q4_0` the parts
//!   that carry the most error per byte saved stay at **q8_0** unless named: the vision tower and projector
//!   (`--vision-type`), the token embedding and the lm_head (when the LLM type is q4_0). llama.cpp's q4_0
//!   keeps `output.weight` higher the same way (q6_K, or q8_0 for rows that are not whole 256-blocks, as
//!   Qwen2's 896). Measured on the tiny model against the PyTorch reference (logits cosine over every prompt
//!   position): pure q4_0 0.9745; lm_head q8_0 0.9781; + token_embd 0.9793; vision q8_0 alone 0.9802;
//!   all three 0.9853. Pure q4_0: `--vision-type q4_0 --embd-type q4_0 --output-type q4_0`.
//! - Fallback: a row length (ggml `ne[0]`) that is not a whole number of the type's blocks cannot be
//!   quantized to it. K-quants (256-element super-blocks; Qwen2's 896 is 3.5 of them) fall back to
//!   **q8_0** (8.5 bits per weight, more than any K-quant offered here) when the row fits blocks of 32,
//!   and to **f16** otherwise; the 32-element block types fall back to **f16**. The converter reports
//!   every tensor that fell back.

use internvl::gguf::GgmlType;
use internvl::names::{Part, Role, TensorSpec};

/// The types `--type` and the overrides accept (the library's one list of what the converter writes).
pub const ALLOWED: &[GgmlType] = internvl::gguf::CONVERT_TYPES;

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

/// The type the q4_0 recipe keeps for the parts it raises.
pub const Q4_0_RECIPE_KEEP: GgmlType = GgmlType::Q8_0;

impl TypeChoice {
    /// Every part at `t`, no recipe (the library's plain choice; the command line uses `with_recipe`).
    pub fn uniform(t: GgmlType) -> Self {
        TypeChoice {
            base: t,
            vision: None,
            llm: None,
            embd: None,
            output: None,
        }
    }
    /// What the command line asks for: `--type base` with the overrides given, where the q4_0 recipe fills
    /// the overrides not given (module docs). Other base types are uniform.
    pub fn with_recipe(
        base: GgmlType,
        vision: Option<GgmlType>,
        llm: Option<GgmlType>,
        embd: Option<GgmlType>,
        output: Option<GgmlType>,
    ) -> Self {
        let q4 = |t: GgmlType| t == GgmlType::Q4_0;
        let keep = Q4_0_RECIPE_KEEP;
        let llm_q4 = q4(llm.unwrap_or(base));
        TypeChoice {
            base,
            vision: vision.or((q4(base)).then_some(keep)),
            llm,
            embd: embd.or(llm_q4.then_some(keep)),
            output: output.or(llm_q4.then_some(keep)),
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
    fn q4_0_recipe_keeps_vision_embd_and_output_at_q8_0_unless_named() {
        use GgmlType::{F16, Q4_0, Q5_0, Q8_0};
        let r = TypeChoice::with_recipe(Q4_0, None, None, None, None);
        assert_eq!(
            (r.vision_type(), r.llm_type(), r.embd_type(), r.output_type()),
            (Q8_0, Q4_0, Q8_0, Q8_0)
        );
        // Back to pure q4_0 by naming the parts.
        let pure = TypeChoice::with_recipe(Q4_0, Some(Q4_0), None, Some(Q4_0), Some(Q4_0));
        assert_eq!(
            (
                pure.vision_type(),
                pure.llm_type(),
                pure.embd_type(),
                pure.output_type()
            ),
            (Q4_0, Q4_0, Q4_0, Q4_0)
        );
        // Only what would be q4_0 is raised: an f16 LLM keeps f16 embeddings and lm_head.
        let r = TypeChoice::with_recipe(Q4_0, None, Some(F16), None, None);
        assert_eq!((r.vision_type(), r.embd_type(), r.output_type()), (Q8_0, F16, F16));
        // A q4_0 LLM under another base type gets the embedding and lm_head rule.
        let r = TypeChoice::with_recipe(F16, None, Some(Q4_0), None, None);
        assert_eq!((r.vision_type(), r.embd_type(), r.output_type()), (F16, Q8_0, Q8_0));
        // Other types are uniform.
        assert_eq!(
            TypeChoice::with_recipe(Q5_0, None, None, None, None),
            TypeChoice::uniform(Q5_0)
        );
        assert_eq!(
            TypeChoice::with_recipe(Q8_0, None, None, None, None),
            TypeChoice::uniform(Q8_0)
        );
        assert!(TypeChoice::with_recipe(Q4_0, None, None, None, None)
            .recipe()
            .contains("type=q4_0 vision=q8_0 llm=q4_0 embd=q8_0 output=q8_0"));
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
