//! The one place that names every GGUF metadata key and every tensor.
//!
//! Tensor names follow llama.cpp where it has them (spec §2.3): the text model uses the `qwen2` names
//! (`token_embd`, `blk.N.attn_q`, ...), the vision tower and projector the mmproj names (`v.blk.N.ln1`,
//! `mm.model.mlp.1`, ...). Our single-file GGUF holds both sets side by side (they do not collide), plus
//! `internvl.*` keys for what llama.cpp has no key for (chat template, preprocessing, provenance).
//!
//! `tensor_specs` is the single source of truth for the tensor set: the converter maps Hugging Face names
//! through it and checks shapes against it, and the runtime checks a loaded file against it.

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
    /// Name in our GGUF.
    pub gguf_name: String,
    /// Shape in ggml `ne` order (reversed), as stored in the GGUF.
    pub ne: Vec<usize>,
    pub part: Part,
    pub role: Role,
}

impl TensorSpec {
    fn new(hf: String, hf_shape: &[usize], gguf: String, part: Part, role: Role) -> Self {
        let ne = hf_shape.iter().rev().copied().collect();
        TensorSpec {
            hf_name: hf,
            hf_shape: hf_shape.to_vec(),
            gguf_name: gguf,
            ne,
            part,
            role,
        }
    }
    pub fn n_elements(&self) -> usize {
        self.hf_shape.iter().product()
    }
}

// Vision tensor names (ours and llama.cpp's mmproj).
pub fn v_class_embd() -> String {
    "v.class_embd".into()
}
pub fn v_patch_embd_w() -> String {
    "v.patch_embd.weight".into()
}
pub fn v_patch_embd_b() -> String {
    "v.patch_embd.bias".into()
}
pub fn v_pos_embd() -> String {
    "v.position_embd.weight".into()
}
/// `v.blk.{l}.{what}.{suffix}`, e.g. `v_blk(3, "attn_qkv", "weight")`.
pub fn v_blk(l: usize, what: &str, suffix: &str) -> String {
    format!("v.blk.{l}.{what}.{suffix}")
}
/// True for the weights of the vision blocks (`v.blk.*.weight`: matrices, and 1-D norm weights, which are
/// f32 already), fused or split qkv alike.
pub fn is_vision_block_weight(name: &str) -> bool {
    name.starts_with("v.blk.") && name.ends_with(".weight")
}
/// True for the matrices of the language model's blocks (`blk.*.{attn_q,attn_k,attn_v,attn_output,
/// ffn_gate,ffn_up,ffn_down}.weight`), not their norm weights.
pub fn is_text_block_matrix(name: &str) -> bool {
    name.starts_with("blk.")
        && name.ends_with(".weight")
        && [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ]
        .iter()
        .any(|m| name.contains(&format!(".{m}.")))
}
/// Projector `mm.model.mlp.{idx}.{suffix}`, idx 0 (LayerNorm), 1 and 3 (Linear).
pub fn mm(idx: usize, suffix: &str) -> String {
    format!("mm.model.mlp.{idx}.{suffix}")
}
// Text tensor names (llama.cpp qwen2).
pub fn token_embd() -> String {
    "token_embd.weight".into()
}
pub fn output_norm() -> String {
    "output_norm.weight".into()
}
pub fn output() -> String {
    "output.weight".into()
}
/// `blk.{l}.{what}.{suffix}`, e.g. `blk(0, "attn_q", "bias")`.
pub fn blk(l: usize, what: &str, suffix: &str) -> String {
    format!("blk.{l}.{what}.{suffix}")
}

/// Every tensor of the model for these hyperparameters, in checkpoint order (vision, projector, LLM).
///
/// The fused qkv of the ViT is kept fused (`v.blk.N.attn_qkv`): one matmul instead of three. The
/// llama.cpp-style split writer (`--split`) splits it into `attn_q/k/v` itself.
pub fn tensor_specs(hp: &Hparams) -> Vec<TensorSpec> {
    use Part::*;
    use Role::*;
    let v = &hp.vision;
    let t = &hp.llm;
    let d = v.n_embd;
    let n_pos = v.n_patches() + 1;
    let mut s = Vec::with_capacity(16 + 14 * v.n_layer + 12 * t.n_layer);
    let vm = "vision_model";
    s.push(TensorSpec::new(
        format!("{vm}.embeddings.class_embedding"),
        &[1, 1, d],
        v_class_embd(),
        Vision,
        ClassEmbd,
    ));
    s.push(TensorSpec::new(
        format!("{vm}.embeddings.patch_embedding.weight"),
        &[d, v.n_channels, v.patch_size, v.patch_size],
        v_patch_embd_w(),
        Vision,
        PatchEmbd,
    ));
    s.push(TensorSpec::new(
        format!("{vm}.embeddings.patch_embedding.bias"),
        &[d],
        v_patch_embd_b(),
        Vision,
        Bias,
    ));
    s.push(TensorSpec::new(
        format!("{vm}.embeddings.position_embedding"),
        &[1, n_pos, d],
        v_pos_embd(),
        Vision,
        PosEmbd,
    ));
    for l in 0..v.n_layer {
        let p = format!("{vm}.encoder.layers.{l}");
        let mut add = |hf: &str, shape: &[usize], what: &str, suffix: &str, role: Role| {
            s.push(TensorSpec::new(
                format!("{p}.{hf}"),
                shape,
                v_blk(l, what, suffix),
                Vision,
                role,
            ));
        };
        add("norm1.weight", &[d], "ln1", "weight", Norm);
        add("norm1.bias", &[d], "ln1", "bias", Norm);
        add("attn.qkv.weight", &[3 * d, d], "attn_qkv", "weight", Matrix);
        add("attn.qkv.bias", &[3 * d], "attn_qkv", "bias", Bias);
        add("attn.proj.weight", &[d, d], "attn_out", "weight", Matrix);
        add("attn.proj.bias", &[d], "attn_out", "bias", Bias);
        add("ls1", &[d], "ls1", "weight", LayerScale);
        add("norm2.weight", &[d], "ln2", "weight", Norm);
        add("norm2.bias", &[d], "ln2", "bias", Norm);
        add("mlp.fc1.weight", &[v.n_ff, d], "ffn_up", "weight", Matrix);
        add("mlp.fc1.bias", &[v.n_ff], "ffn_up", "bias", Bias);
        add("mlp.fc2.weight", &[d, v.n_ff], "ffn_down", "weight", Matrix);
        add("mlp.fc2.bias", &[d], "ffn_down", "bias", Bias);
        add("ls2", &[d], "ls2", "weight", LayerScale);
    }
    let pin = hp.projector_in();
    s.push(TensorSpec::new(
        "mlp1.0.weight".into(),
        &[pin],
        mm(0, "weight"),
        Projector,
        Norm,
    ));
    s.push(TensorSpec::new(
        "mlp1.0.bias".into(),
        &[pin],
        mm(0, "bias"),
        Projector,
        Norm,
    ));
    s.push(TensorSpec::new(
        "mlp1.1.weight".into(),
        &[t.n_embd, pin],
        mm(1, "weight"),
        Projector,
        Matrix,
    ));
    s.push(TensorSpec::new(
        "mlp1.1.bias".into(),
        &[t.n_embd],
        mm(1, "bias"),
        Projector,
        Bias,
    ));
    s.push(TensorSpec::new(
        "mlp1.3.weight".into(),
        &[t.n_embd, t.n_embd],
        mm(3, "weight"),
        Projector,
        Matrix,
    ));
    s.push(TensorSpec::new(
        "mlp1.3.bias".into(),
        &[t.n_embd],
        mm(3, "bias"),
        Projector,
        Bias,
    ));

    let lm = "language_model.model";
    let e = t.n_embd;
    let kv = t.n_embd_kv();
    s.push(TensorSpec::new(
        format!("{lm}.embed_tokens.weight"),
        &[t.n_vocab, e],
        token_embd(),
        Llm,
        TokenEmbd,
    ));
    for l in 0..t.n_layer {
        let p = format!("{lm}.layers.{l}");
        let mut add = |hf: &str, shape: &[usize], what: &str, suffix: &str, role: Role| {
            s.push(TensorSpec::new(
                format!("{p}.{hf}"),
                shape,
                blk(l, what, suffix),
                Llm,
                role,
            ));
        };
        add("input_layernorm.weight", &[e], "attn_norm", "weight", Norm);
        add("self_attn.q_proj.weight", &[e, e], "attn_q", "weight", Matrix);
        add("self_attn.q_proj.bias", &[e], "attn_q", "bias", Bias);
        add("self_attn.k_proj.weight", &[kv, e], "attn_k", "weight", Matrix);
        add("self_attn.k_proj.bias", &[kv], "attn_k", "bias", Bias);
        add("self_attn.v_proj.weight", &[kv, e], "attn_v", "weight", Matrix);
        add("self_attn.v_proj.bias", &[kv], "attn_v", "bias", Bias);
        add("self_attn.o_proj.weight", &[e, e], "attn_output", "weight", Matrix);
        add("post_attention_layernorm.weight", &[e], "ffn_norm", "weight", Norm);
        add("mlp.gate_proj.weight", &[t.n_ff, e], "ffn_gate", "weight", Matrix);
        add("mlp.up_proj.weight", &[t.n_ff, e], "ffn_up", "weight", Matrix);
        add("mlp.down_proj.weight", &[e, t.n_ff], "ffn_down", "weight", Matrix);
    }
    s.push(TensorSpec::new(
        format!("{lm}.norm.weight"),
        &[e],
        output_norm(),
        Llm,
        Norm,
    ));
    s.push(TensorSpec::new(
        "language_model.lm_head.weight".into(),
        &[t.n_vocab, e],
        output(),
        Llm,
        Output,
    ));
    s
}
