//! The one place that names every GGUF metadata key and every tensor.
//!
//! Tensor names follow llama.cpp where it has them (spec §2.3): the text model uses the `qwen2` names
//! (`token_embd`, `blk.N.attn_q`, ...), the vision tower and projector the mmproj names (`v.blk.N.ln1`,
//! `mm.model.mlp.1`, ...). Our single-file GGUF holds both sets side by side (they do not collide), plus
//! `internvl.*` keys for what llama.cpp has no key for (chat template, preprocessing, provenance).
//!
//! `TensorName` is the one table of tensor names (graph code holds weights resolved from it at load and
//! spells none); `tensor_specs` is the single source of truth for the tensor set: the converter maps Hugging
//! Face names through it and checks shapes against it, and the runtime checks a loaded file against it.

use crate::hparams::Hparams;

/// Metadata keys.
pub mod key {
    pub const ARCH: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANT_VERSION: &str = "general.quantization_version";
    pub const ALIGNMENT: &str = "general.alignment";

    // Qwen2 text model (llama.cpp names).
    pub const LLM_BLOCK_COUNT: &str = "qwen2.block_count";
    pub const LLM_CONTEXT_LENGTH: &str = "qwen2.context_length";
    pub const LLM_EMBD: &str = "qwen2.embedding_length";
    pub const LLM_FF: &str = "qwen2.feed_forward_length";
    pub const LLM_HEAD_COUNT: &str = "qwen2.attention.head_count";
    pub const LLM_HEAD_COUNT_KV: &str = "qwen2.attention.head_count_kv";
    pub const LLM_ROPE_FREQ_BASE: &str = "qwen2.rope.freq_base";
    pub const LLM_RMS_EPS: &str = "qwen2.attention.layer_norm_rms_epsilon";
    pub const LLM_VOCAB_SIZE: &str = "qwen2.vocab_size";

    // Vision tower and projector (llama.cpp mmproj names).
    pub const CLIP_PROJECTOR_TYPE: &str = "clip.projector_type";
    pub const CLIP_HAS_VISION: &str = "clip.has_vision_encoder";
    pub const CLIP_USE_GELU: &str = "clip.use_gelu";
    pub const V_IMAGE_SIZE: &str = "clip.vision.image_size";
    pub const V_PATCH_SIZE: &str = "clip.vision.patch_size";
    pub const V_EMBD: &str = "clip.vision.embedding_length";
    pub const V_FF: &str = "clip.vision.feed_forward_length";
    pub const V_BLOCK_COUNT: &str = "clip.vision.block_count";
    pub const V_HEAD_COUNT: &str = "clip.vision.attention.head_count";
    pub const V_LN_EPS: &str = "clip.vision.attention.layer_norm_epsilon";
    pub const V_PROJ_DIM: &str = "clip.vision.projection_dim";
    pub const V_IMAGE_MEAN: &str = "clip.vision.image_mean";
    pub const V_IMAGE_STD: &str = "clip.vision.image_std";
    pub const V_SCALE_FACTOR: &str = "clip.vision.projector.scale_factor";
    pub const V_MIN_TILES: &str = "clip.vision.preproc_min_tiles";
    pub const V_MAX_TILES: &str = "clip.vision.preproc_max_tiles";

    // Ours: what llama.cpp has no key for.
    pub const PROJ_LN_EPS: &str = "internvl.projector.layer_norm_epsilon";
    pub const DOWNSAMPLE_RATIO: &str = "internvl.downsample_ratio";
    pub const PS_VERSION: &str = "internvl.ps_version";
    pub const USE_THUMBNAIL: &str = "internvl.use_thumbnail";
    pub const DYNAMIC_IMAGE_SIZE: &str = "internvl.dynamic_image_size";
    pub const NUM_IMAGE_TOKEN: &str = "internvl.num_image_token";
    pub const TEMPLATE_NAME: &str = "internvl.chat.template_name";
    pub const SYSTEM_MESSAGE: &str = "internvl.chat.system_message";
    pub const IMG_START_ID: &str = "internvl.token.img_start_id";
    pub const IMG_END_ID: &str = "internvl.token.img_end_id";
    pub const IMG_CONTEXT_ID: &str = "internvl.token.img_context_id";
    pub const STOP_IDS: &str = "internvl.token.stop_ids";
    pub const SOURCE_SHA256: &str = "internvl.source.sha256";
    pub const CONVERTER_VERSION: &str = "internvl.converter.version";
    pub const QUANT_RECIPE: &str = "internvl.converter.recipe";

    // Tokenizer: the exact Hugging Face tokenizer JSON (what we rebuild from), plus llama.cpp's arrays.
    pub const TOKENIZER_HF_JSON: &str = "tokenizer.huggingface.json";
    pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const TOKENIZER_MERGES: &str = "tokenizer.ggml.merges";
    pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const TOKENIZER_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const TOKENIZER_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// Which part of the model a tensor belongs to (quantization overrides are per part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Vision,
    Projector,
    Llm,
}

/// What a tensor is, which decides its storage type (see the converter's quantization policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A Linear weight matrix: quantizable.
    Matrix,
    /// LayerNorm / RMSNorm weight or bias: stays f32.
    Norm,
    /// Linear or conv bias: stays f32.
    Bias,
    /// Per-channel layer scale (ls1/ls2): stays f32.
    LayerScale,
    /// CLS token: f32.
    ClassEmbd,
    /// Learned position table: f32.
    PosEmbd,
    /// Conv2d patch embedding weight: f16.
    PatchEmbd,
    /// Token embedding table (row lookups): `--embd-type`.
    TokenEmbd,
    /// The untied lm_head: `--output-type`.
    Output,
}

/// One tensor of the model: its Hugging Face name and shape, and its GGUF name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Name in the original checkpoint (`model.safetensors`).
    pub hf_name: String,
    /// Shape in PyTorch order, as stored in the checkpoint.
    pub hf_shape: Vec<usize>,
    /// What the tensor is, and its layer.
    pub name: TensorName,
    pub layer: Option<usize>,
    /// Name in our GGUF (`name` in `layer`).
    pub gguf_name: String,
    /// Shape in ggml `ne` order (reversed), as stored in the GGUF.
    pub ne: Vec<usize>,
    pub part: Part,
    pub role: Role,
}

impl TensorSpec {
    fn new(hf: String, hf_shape: &[usize], name: TensorName, layer: Option<usize>, part: Part, role: Role) -> Self {
        let ne = hf_shape.iter().rev().copied().collect();
        TensorSpec {
            hf_name: hf,
            hf_shape: hf_shape.to_vec(),
            name,
            layer,
            gguf_name: name.gguf(layer),
            ne,
            part,
            role,
        }
    }
    pub fn n_elements(&self) -> usize {
        self.hf_shape.iter().product()
    }
}

/// Every tensor the runtime reads, by what it is. `pattern` is the one table of their GGUF names (`{l}` is
/// the layer); graph code never spells a name, it holds the weights resolved from these once, at load
/// (`model::linear::Resolver`). A new model adds its tensors here (llama.cpp's names where it has them, as
/// `src/llama-arch.cpp` does) and lists them in its `tensor_specs` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorName {
    // Vision tower (llama.cpp's mmproj names).
    VClassEmbd,
    VPatchEmbd,
    VPatchEmbdBias,
    VPosEmbd,
    VLn1,
    VLn1Bias,
    /// The fused q|k|v rows (ours); llama.cpp's mmproj holds them split (`VAttnQ`, `VAttnK`, `VAttnV`).
    VAttnQkv,
    VAttnQkvBias,
    VAttnQ,
    VAttnQBias,
    VAttnK,
    VAttnKBias,
    VAttnV,
    VAttnVBias,
    VAttnOut,
    VAttnOutBias,
    VLs1,
    VLn2,
    VLn2Bias,
    VFfnUp,
    VFfnUpBias,
    VFfnDown,
    VFfnDownBias,
    VLs2,
    // Projector mlp1 (LayerNorm, Linear, GELU, Linear).
    MmNorm,
    MmNormBias,
    MmUp,
    MmUpBias,
    MmDown,
    MmDownBias,
    // Language model (llama.cpp's names, shared by its architectures).
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnQBias,
    AttnK,
    AttnKBias,
    AttnV,
    AttnVBias,
    AttnOut,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
}

impl TensorName {
    /// The GGUF name; `{l}` stands for the layer.
    pub const fn pattern(self) -> &'static str {
        use TensorName::*;
        match self {
            VClassEmbd => "v.class_embd",
            VPatchEmbd => "v.patch_embd.weight",
            VPatchEmbdBias => "v.patch_embd.bias",
            VPosEmbd => "v.position_embd.weight",
            VLn1 => "v.blk.{l}.ln1.weight",
            VLn1Bias => "v.blk.{l}.ln1.bias",
            VAttnQkv => "v.blk.{l}.attn_qkv.weight",
            VAttnQkvBias => "v.blk.{l}.attn_qkv.bias",
            VAttnQ => "v.blk.{l}.attn_q.weight",
            VAttnQBias => "v.blk.{l}.attn_q.bias",
            VAttnK => "v.blk.{l}.attn_k.weight",
            VAttnKBias => "v.blk.{l}.attn_k.bias",
            VAttnV => "v.blk.{l}.attn_v.weight",
            VAttnVBias => "v.blk.{l}.attn_v.bias",
            VAttnOut => "v.blk.{l}.attn_out.weight",
            VAttnOutBias => "v.blk.{l}.attn_out.bias",
            VLs1 => "v.blk.{l}.ls1.weight",
            VLn2 => "v.blk.{l}.ln2.weight",
            VLn2Bias => "v.blk.{l}.ln2.bias",
            VFfnUp => "v.blk.{l}.ffn_up.weight",
            VFfnUpBias => "v.blk.{l}.ffn_up.bias",
            VFfnDown => "v.blk.{l}.ffn_down.weight",
            VFfnDownBias => "v.blk.{l}.ffn_down.bias",
            VLs2 => "v.blk.{l}.ls2.weight",
            MmNorm => "mm.model.mlp.0.weight",
            MmNormBias => "mm.model.mlp.0.bias",
            MmUp => "mm.model.mlp.1.weight",
            MmUpBias => "mm.model.mlp.1.bias",
            MmDown => "mm.model.mlp.3.weight",
            MmDownBias => "mm.model.mlp.3.bias",
            TokenEmbd => "token_embd.weight",
            OutputNorm => "output_norm.weight",
            Output => "output.weight",
            AttnNorm => "blk.{l}.attn_norm.weight",
            AttnQ => "blk.{l}.attn_q.weight",
            AttnQBias => "blk.{l}.attn_q.bias",
            AttnK => "blk.{l}.attn_k.weight",
            AttnKBias => "blk.{l}.attn_k.bias",
            AttnV => "blk.{l}.attn_v.weight",
            AttnVBias => "blk.{l}.attn_v.bias",
            AttnOut => "blk.{l}.attn_output.weight",
            FfnNorm => "blk.{l}.ffn_norm.weight",
            FfnGate => "blk.{l}.ffn_gate.weight",
            FfnUp => "blk.{l}.ffn_up.weight",
            FfnDown => "blk.{l}.ffn_down.weight",
        }
    }

    /// Whether the name holds a layer number.
    pub fn per_layer(self) -> bool {
        self.pattern().contains("{l}")
    }

    /// The name of a model-wide tensor (a per-layer one needs `at`).
    pub fn name(self) -> String {
        debug_assert!(!self.per_layer(), "{self:?} is per layer");
        self.pattern().to_string()
    }

    /// The name of this tensor of layer `l`.
    pub fn at(self, l: usize) -> String {
        self.pattern().replace("{l}", &l.to_string())
    }

    /// The name in layer `layer` (`None`: a model-wide tensor).
    pub fn gguf(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) => self.at(l),
            None => self.name(),
        }
    }

    /// The three parts llama.cpp's mmproj splits a fused qkv weight or bias into, in q, k, v order.
    pub fn qkv_parts(self) -> Option<[TensorName; 3]> {
        use TensorName::*;
        match self {
            VAttnQkv => Some([VAttnQ, VAttnK, VAttnV]),
            VAttnQkvBias => Some([VAttnQBias, VAttnKBias, VAttnVBias]),
            _ => None,
        }
    }
}

/// Every tensor of the model for these hyperparameters, in checkpoint order (vision, projector, LLM): the
/// map from Hugging Face names to ours (the converter's) and the list the runtime checks a file against.
///
/// The fused qkv of the ViT is kept fused (`v.blk.N.attn_qkv`): one matmul instead of three. The
/// llama.cpp-style split writer (`--split`) splits it into `attn_q/k/v` itself (`TensorName::qkv_parts`).
pub fn tensor_specs(hp: &Hparams) -> Vec<TensorSpec> {
    use Part::*;
    use Role::*;
    use TensorName as N;
    let v = &hp.vision;
    let t = &hp.llm;
    let d = v.n_embd;
    let n_pos = v.n_patches() + 1;
    let mut s = Vec::with_capacity(16 + 14 * v.n_layer + 12 * t.n_layer);
    let vm = "vision_model";
    let one = |s: &mut Vec<TensorSpec>, hf: String, shape: &[usize], name: N, part: Part, role: Role| {
        s.push(TensorSpec::new(hf, shape, name, None, part, role))
    };
    one(
        &mut s,
        format!("{vm}.embeddings.class_embedding"),
        &[1, 1, d],
        N::VClassEmbd,
        Vision,
        ClassEmbd,
    );
    one(
        &mut s,
        format!("{vm}.embeddings.patch_embedding.weight"),
        &[d, v.n_channels, v.patch_size, v.patch_size],
        N::VPatchEmbd,
        Vision,
        PatchEmbd,
    );
    one(
        &mut s,
        format!("{vm}.embeddings.patch_embedding.bias"),
        &[d],
        N::VPatchEmbdBias,
        Vision,
        Bias,
    );
    one(
        &mut s,
        format!("{vm}.embeddings.position_embedding"),
        &[1, n_pos, d],
        N::VPosEmbd,
        Vision,
        PosEmbd,
    );
    for l in 0..v.n_layer {
        let p = format!("{vm}.encoder.layers.{l}");
        let mut add = |hf: &str, shape: &[usize], name: N, role: Role| {
            s.push(TensorSpec::new(format!("{p}.{hf}"), shape, name, Some(l), Vision, role));
        };
        add("norm1.weight", &[d], N::VLn1, Norm);
        add("norm1.bias", &[d], N::VLn1Bias, Norm);
        add("attn.qkv.weight", &[3 * d, d], N::VAttnQkv, Matrix);
        add("attn.qkv.bias", &[3 * d], N::VAttnQkvBias, Bias);
        add("attn.proj.weight", &[d, d], N::VAttnOut, Matrix);
        add("attn.proj.bias", &[d], N::VAttnOutBias, Bias);
        add("ls1", &[d], N::VLs1, LayerScale);
        add("norm2.weight", &[d], N::VLn2, Norm);
        add("norm2.bias", &[d], N::VLn2Bias, Norm);
        add("mlp.fc1.weight", &[v.n_ff, d], N::VFfnUp, Matrix);
        add("mlp.fc1.bias", &[v.n_ff], N::VFfnUpBias, Bias);
        add("mlp.fc2.weight", &[d, v.n_ff], N::VFfnDown, Matrix);
        add("mlp.fc2.bias", &[d], N::VFfnDownBias, Bias);
        add("ls2", &[d], N::VLs2, LayerScale);
    }
    let pin = hp.projector_in();
    one(&mut s, "mlp1.0.weight".into(), &[pin], N::MmNorm, Projector, Norm);
    one(&mut s, "mlp1.0.bias".into(), &[pin], N::MmNormBias, Projector, Norm);
    one(
        &mut s,
        "mlp1.1.weight".into(),
        &[t.n_embd, pin],
        N::MmUp,
        Projector,
        Matrix,
    );
    one(&mut s, "mlp1.1.bias".into(), &[t.n_embd], N::MmUpBias, Projector, Bias);
    one(
        &mut s,
        "mlp1.3.weight".into(),
        &[t.n_embd, t.n_embd],
        N::MmDown,
        Projector,
        Matrix,
    );
    one(
        &mut s,
        "mlp1.3.bias".into(),
        &[t.n_embd],
        N::MmDownBias,
        Projector,
        Bias,
    );

    let lm = "language_model.model";
    let e = t.n_embd;
    let kv = t.n_embd_kv();
    one(
        &mut s,
        format!("{lm}.embed_tokens.weight"),
        &[t.n_vocab, e],
        N::TokenEmbd,
        Llm,
        TokenEmbd,
    );
    for l in 0..t.n_layer {
        let p = format!("{lm}.layers.{l}");
        let mut add = |hf: &str, shape: &[usize], name: N, role: Role| {
            s.push(TensorSpec::new(format!("{p}.{hf}"), shape, name, Some(l), Llm, role));
        };
        add("input_layernorm.weight", &[e], N::AttnNorm, Norm);
        add("self_attn.q_proj.weight", &[e, e], N::AttnQ, Matrix);
        add("self_attn.q_proj.bias", &[e], N::AttnQBias, Bias);
        add("self_attn.k_proj.weight", &[kv, e], N::AttnK, Matrix);
        add("self_attn.k_proj.bias", &[kv], N::AttnKBias, Bias);
        add("self_attn.v_proj.weight", &[kv, e], N::AttnV, Matrix);
        add("self_attn.v_proj.bias", &[kv], N::AttnVBias, Bias);
        add("self_attn.o_proj.weight", &[e, e], N::AttnOut, Matrix);
        add("post_attention_layernorm.weight", &[e], N::FfnNorm, Norm);
        add("mlp.gate_proj.weight", &[t.n_ff, e], N::FfnGate, Matrix);
        add("mlp.up_proj.weight", &[t.n_ff, e], N::FfnUp, Matrix);
        add("mlp.down_proj.weight", &[e, t.n_ff], N::FfnDown, Matrix);
    }
    one(&mut s, format!("{lm}.norm.weight"), &[e], N::OutputNorm, Llm, Norm);
    one(
        &mut s,
        "language_model.lm_head.weight".into(),
        &[t.n_vocab, e],
        N::Output,
        Llm,
        Output,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tensor_of_the_specs_is_named_by_the_table_once() {
        let hp = Hparams::tiny();
        let specs = tensor_specs(&hp);
        let mut seen = std::collections::HashSet::new();
        for s in &specs {
            assert_eq!(s.gguf_name, s.name.gguf(s.layer));
            assert_eq!(s.name.per_layer(), s.layer.is_some(), "{:?}", s.name);
            assert!(seen.insert(s.gguf_name.clone()), "{} twice", s.gguf_name);
        }
        // The split qkv names (llama.cpp's mmproj) are the table's too, and collide with nothing.
        for s in &specs {
            for part in s.name.qkv_parts().into_iter().flatten() {
                assert!(seen.insert(part.gguf(s.layer)), "{part:?}");
            }
        }
        assert_eq!(TensorName::VAttnQkv.at(3), "v.blk.3.attn_qkv.weight");
        assert_eq!(TensorName::AttnOut.at(0), "blk.0.attn_output.weight");
        assert_eq!(TensorName::Output.name(), "output.weight");
    }
}
