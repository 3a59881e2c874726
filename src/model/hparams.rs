//! Hyperparameters of the three parts. Filled from the checkpoint's config.json by the converter and from
//! GGUF keys (`names::key`) by the runtime; never hard-coded (the defaults below exist only to build test
//! presets and are those of InternVL2-1B, spec §1).

/// InternViT (spec §1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionHparams {
    pub image_size: usize,
    pub patch_size: usize,
    pub n_channels: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// eps of norm1/norm2 (1e-6).
    pub ln_eps: f32,
}

impl VisionHparams {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn n_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// Qwen2 (spec §1.2).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmHparams {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

impl LlmHparams {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
    pub fn n_embd_kv(&self) -> usize {
        self.head_dim() * self.n_head_kv
    }
}

/// The whole model: vision, projector glue and LLM (spec §1.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub vision: VisionHparams,
    pub llm: LlmHparams,
    /// Pixel-shuffle ratio (0.5: 2x2 patches become one token).
    pub downsample_ratio: f32,
    /// "v2" is the only one InternVL2-1B uses (spec §3.8).
    pub ps_version: String,
    /// Projector LayerNorm eps (nn.LayerNorm default 1e-5).
    pub proj_ln_eps: f32,
}

impl Hparams {
    /// Pixel-shuffle scale as an integer factor (2 for ratio 0.5).
    pub fn shuffle_factor(&self) -> usize {
        (1.0 / self.downsample_ratio).round() as usize
    }
    /// Input width of the projector: vision width times factor².
    pub fn projector_in(&self) -> usize {
        self.vision.n_embd * self.shuffle_factor() * self.shuffle_factor()
    }
    /// LLM tokens per tile (256 for InternVL2-1B).
    pub fn num_image_token(&self) -> usize {
        self.vision.n_patches() / (self.shuffle_factor() * self.shuffle_factor())
    }

    /// InternVL2-1B itself (spec §1).
    pub fn internvl2_1b() -> Self {
        Hparams {
            vision: VisionHparams {
                image_size: 448,
                patch_size: 14,
                n_channels: 3,
                n_embd: 1024,
                n_ff: 4096,
                n_layer: 24,
                n_head: 16,
                ln_eps: 1e-6,
            },
            llm: LlmHparams {
                n_vocab: 151655,
                n_embd: 896,
                n_ff: 4864,
                n_layer: 24,
                n_head: 14,
                n_head_kv: 2,
                n_ctx_train: 32768,
                rope_theta: 1_000_000.0,
                rms_eps: 1e-6,
            },
            downsample_ratio: 0.5,
            ps_version: "v2".into(),
            proj_ln_eps: 1e-5,
        }
    }

    /// The tiny test preset: every structural ratio that can hide a bug is kept (GQA group 7, untied
    /// lm_head, biases, layer scales, pixel shuffle on a 32x32 grid, the real vocabulary so the real
    /// tokenizer works), with small widths and 2 layers per part.
    pub fn tiny() -> Self {
        Hparams {
            vision: VisionHparams {
                image_size: 448,
                patch_size: 14,
                n_channels: 3,
                n_embd: 64,
                n_ff: 256,
                n_layer: 2,
                n_head: 4,
                ln_eps: 1e-6,
            },
            llm: LlmHparams {
                n_vocab: 151655,
                // 14 heads of 32 over 2 KV heads, as the real model (GQA group 7 with more than one KV
                // head, so a wrong head-to-KV-head mapping shows). Rows fit the 32-wide blocks of
                // q8_0/q4_0 (weights and KV cache), and 448 is not a multiple of 256, so the K-quant
                // fallback is exercised as with the real 896.
                n_embd: 448,
                n_ff: 608,
                n_layer: 2,
                n_head: 14,
                n_head_kv: 2,
                n_ctx_train: 32768,
                rope_theta: 1_000_000.0,
                rms_eps: 1e-6,
            },
            downsample_ratio: 0.5,
            ps_version: "v2".into(),
            proj_ln_eps: 1e-5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::tensor_specs;

    #[test]
    fn full_model_has_637_tensors_and_938m_params() {
        let specs = tensor_specs(&Hparams::internvl2_1b());
        assert_eq!(specs.len(), 637);
        let n: usize = specs.iter().map(|s| s.n_elements()).sum();
        assert_eq!(n, 938_158_976);
        let names: std::collections::HashSet<_> = specs.iter().map(|s| s.gguf_name.clone()).collect();
        assert_eq!(names.len(), 637, "GGUF names must be unique");
    }

    #[test]
    fn tiny_keeps_the_ratios() {
        let hp = Hparams::tiny();
        assert_eq!(hp.llm.n_head / hp.llm.n_head_kv, 7);
        assert!(hp.llm.n_head_kv > 1);
        assert_eq!(hp.llm.head_dim(), 32);
        assert_eq!(hp.llm.n_embd_kv() % 32, 0);
        assert_ne!(hp.llm.n_embd % 256, 0, "like 896, not a multiple of 256");
        assert_eq!(hp.vision.grid(), 32);
        assert_eq!(hp.num_image_token(), 256);
    }
}
