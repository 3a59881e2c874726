//! ggml tensor types as they appear in GGUF tensor infos.
//!
//! Ids, block sizes and block byte sizes are ggml's (`enum ggml_type` in `ggml.h`, `type_traits` in `ggml.c`,
//! block layouts asserted in `ggml-common.h` of the pinned ggml). Ids that ggml has retired (4, 5, 31-33,
//! 36-38) are not types here: a file that uses one is refused.

/// A ggml tensor element type, with ggml's numeric id as discriminant.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

/// Super-block size of the k-quants and i-quants (`QK_K` in ggml-common.h).
const QK_K: usize = 256;

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ2_S,
        Self::IQ4_XS,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F64,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4,
        Self::NVFP4,
        Self::Q1_0,
        Self::Q2_0,
    ];

    /// The type with ggml id `id`, or `None` for an unknown or retired id.
    pub fn from_u32(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as u32 == id)
    }

    /// The type named `name`, compared ASCII-case-insensitively ("q8_0", "F16", "q4_k" and "q4_K" all work).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// ggml's id for this type.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for this type (`ggml_type_name`): lowercase except the `K` of k-quants ("q4_K").
    pub fn name(self) -> &'static str {
        self.traits().0
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.traits().1
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.traits().2
    }

    /// Whether this is a block-quantized type (block size > 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of one row of `ne0` elements; `None` when `ne0` is not a whole number of blocks or overflows.
    pub fn row_size(self, ne0: usize) -> Option<usize> {
        let block = self.block_size();
        let (blocks, partial) = (ne0 / block, ne0 % block);
        if partial != 0 {
            return None;
        }
        blocks.checked_mul(self.type_size())
    }

    /// Bytes of a contiguous tensor with dimensions `ne` (ggml order, `ne[0]` innermost); `None` when
    /// `ne[0]` is not a whole number of blocks or the size overflows `usize`. An empty `ne` is a scalar.
    pub fn nbytes(self, ne: &[usize]) -> Option<usize> {
        let (first, rest) = match ne.split_first() {
            Some(split) => split,
            None => return self.row_size(1),
        };
        rest.iter()
            .try_fold(self.row_size(*first)?, |acc, &n| acc.checked_mul(n))
    }

    /// (name, block size, bytes per block), from ggml's `type_traits`.
    fn traits(self) -> (&'static str, usize, usize) {
        use GgmlType::*;
        match self {
            F32 => ("f32", 1, 4),
            F16 => ("f16", 1, 2),
            Q4_0 => ("q4_0", 32, 18),
            Q4_1 => ("q4_1", 32, 20),
            Q5_0 => ("q5_0", 32, 22),
            Q5_1 => ("q5_1", 32, 24),
            Q8_0 => ("q8_0", 32, 34),
            Q8_1 => ("q8_1", 32, 36), // 2 x f16 + 32 x i8 (the Python gguf table still says 40)
            Q2_K => ("q2_K", QK_K, 84),
            Q3_K => ("q3_K", QK_K, 110),
            Q4_K => ("q4_K", QK_K, 144),
            Q5_K => ("q5_K", QK_K, 176),
            Q6_K => ("q6_K", QK_K, 210),
            Q8_K => ("q8_K", QK_K, 292),
            IQ2_XXS => ("iq2_xxs", QK_K, 66),
            IQ2_XS => ("iq2_xs", QK_K, 74),
            IQ3_XXS => ("iq3_xxs", QK_K, 98),
            IQ1_S => ("iq1_s", QK_K, 50),
            IQ4_NL => ("iq4_nl", 32, 18),
            IQ3_S => ("iq3_s", QK_K, 110),
            IQ2_S => ("iq2_s", QK_K, 82),
            IQ4_XS => ("iq4_xs", QK_K, 136),
            I8 => ("i8", 1, 1),
            I16 => ("i16", 1, 2),
            I32 => ("i32", 1, 4),
            I64 => ("i64", 1, 8),
            F64 => ("f64", 1, 8),
            IQ1_M => ("iq1_m", QK_K, 56),
            BF16 => ("bf16", 1, 2),
            TQ1_0 => ("tq1_0", QK_K, 54),
            TQ2_0 => ("tq2_0", QK_K, 66),
            MXFP4 => ("mxfp4", 32, 17),
            NVFP4 => ("nvfp4", 64, 36),
            Q1_0 => ("q1_0", 128, 18),
            Q2_0 => ("q2_0", 64, 18),
        }
    }
}

/// The weight types `internvl-convert` writes (`--type` and its per-part overrides), in the order shown to
/// users. The one list of weight types: the converter's `policy::ALLOWED`, `--hf-type` (`engine::hf`) and
/// the runtime's [`MATRIX_TYPES`] are made from it.
pub const CONVERT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
];

/// Matrix types the runtime also accepts although the converter does not write them: the K-quants a file
/// made elsewhere (llama.cpp's quantizer) may hold.
pub const FOREIGN_MATRIX_TYPES: &[GgmlType] = &[GgmlType::Q4_K, GgmlType::Q5_K];

/// Types the runtime accepts for quantizable matrices: [`CONVERT_TYPES`], then [`FOREIGN_MATRIX_TYPES`].
pub const MATRIX_TYPES: [GgmlType; CONVERT_TYPES.len() + FOREIGN_MATRIX_TYPES.len()] = {
    let mut t = [GgmlType::F32; CONVERT_TYPES.len() + FOREIGN_MATRIX_TYPES.len()];
    let mut i = 0;
    while i < CONVERT_TYPES.len() {
        t[i] = CONVERT_TYPES[i];
        i += 1;
    }
    let mut j = 0;
    while j < FOREIGN_MATRIX_TYPES.len() {
        t[i + j] = FOREIGN_MATRIX_TYPES[j];
        j += 1;
    }
    t
};

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_u32(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_ascii_uppercase()), Some(t));
        }
        for retired in [4u32, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_u32(retired), None, "id {retired}");
        }
        assert_eq!(GgmlType::from_name("q4_k"), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_name("q9_0"), None);
    }

    #[test]
    fn matrix_types_are_the_converter_types_then_the_foreign_ones() {
        assert_eq!(&MATRIX_TYPES[..CONVERT_TYPES.len()], CONVERT_TYPES);
        assert_eq!(&MATRIX_TYPES[CONVERT_TYPES.len()..], FOREIGN_MATRIX_TYPES);
        assert!(FOREIGN_MATRIX_TYPES.iter().all(|t| !CONVERT_TYPES.contains(t)));
    }

    #[test]
    fn sizes() {
        assert_eq!(GgmlType::Q8_0.row_size(64), Some(68));
        assert_eq!(GgmlType::Q8_0.row_size(33), None);
        assert_eq!(GgmlType::F16.nbytes(&[3, 5, 7]), Some(210));
        assert_eq!(GgmlType::Q4_K.nbytes(&[512, 3]), Some(2 * 144 * 3));
        assert_eq!(GgmlType::F32.nbytes(&[usize::MAX, 2]), None);
        assert_eq!(GgmlType::F32.nbytes(&[]), Some(4));
    }
}
