//! Token sampling: greedy, or temperature with top-k, top-p and min-p, a repetition penalty, and a seeded
//! generator so that a seed reproduces a run. Defaults follow spec §8: greedy.

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables (HF semantics: positive logits divided, negative multiplied).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    p: SamplingParams,
    state: u64,
}

impl Sampler {
    pub fn new(p: SamplingParams) -> Self {
        let state = p.seed ^ 0x9E37_79B9_7F4A_7C15;
        Sampler { p, state }
    }

    /// A uniform number in [0, 1) (splitmix64).
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits`, given the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut l: Vec<f32> = logits.to_vec();
        if self.p.repetition_penalty != 1.0 && self.p.repetition_penalty > 0.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in history {
                if seen.insert(t) {
                    if let Some(x) = l.get_mut(t as usize) {
                        *x = if *x > 0.0 {
                            *x / self.p.repetition_penalty
                        } else {
                            *x * self.p.repetition_penalty
                        };
                    }
                }
            }
        }
        if self.p.temperature <= 0.0 {
            return argmax(&l);
        }
        // Tokens a grammar mask set to -inf never enter the sort (a mask often leaves a handful of 151k).
        let mut cand: Vec<(u32, f32)> = l
            .iter()
            .enumerate()
            .filter(|(_, x)| **x != f32::NEG_INFINITY)
            .map(|(i, &x)| (i as u32, x / self.p.temperature))
            .collect();
        if cand.is_empty() {
            return argmax(&l);
        }
        cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        if self.p.top_k > 0 && self.p.top_k < cand.len() {
            cand.truncate(self.p.top_k);
        }
        let maxv = cand.first().map(|c| c.1).unwrap_or(0.0);
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - maxv) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.p.min_p > 0.0 {
            let cut = probs.first().copied().unwrap_or(0.0) * self.p.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= cut).count().max(1);
            probs.truncate(keep);
        }
        if self.p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.next_f64() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[probs.len() - 1].0
    }
}

/// The log-probability of one token, with the most likely alternatives at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `n` most likely tokens at this step, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` for `id` and the `top_n` most likely ids: the model's own distribution (raw
/// logits, before the repetition penalty, temperature, top-k/p, min-p and any grammar mask), as vLLM and
/// OpenAI report them. Non-finite logits count as impossible.
pub fn logprobs(logits: &[f32], id: u32, top_n: usize) -> TokenLogprob {
    let max = logits
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| ((x - max) as f64).exp())
        .sum();
    let log_z = max as f64 + sum.ln();
    let lp = |x: f32| {
        if x.is_finite() {
            (x as f64 - log_z) as f32
        } else {
            f32::NEG_INFINITY
        }
    };
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        // One pass keeping the best `top_n` (a sorted small vector: n is at most 20).
        for (i, &x) in logits.iter().enumerate() {
            if !x.is_finite() || (top.len() == top_n && x <= top[top_n - 1].1) {
                continue;
            }
            let at = top.iter().position(|&(_, y)| x > y).unwrap_or(top.len());
            top.insert(at, (i as u32, x));
            top.truncate(top_n);
        }
    }
    TokenLogprob {
        id,
        logprob: logits.get(id as usize).map_or(f32::NEG_INFINITY, |&x| lp(x)),
        top: top.into_iter().map(|(i, x)| (i, lp(x))).collect(),
    }
}

/// Index of the largest value (the first on ties, like torch.argmax).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_log_softmax_of_the_raw_logits() {
        let logits = vec![1.0f32, 3.0, 2.0, f32::NEG_INFINITY, 3.0];
        let lp = logprobs(&logits, 2, 3);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        // Ties keep the lower id first; -inf never appears.
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 4, 2]);
        let total: f64 = logits
            .iter()
            .map(|&x| (logprobs(&logits, 0, 0).logprob as f64 - 1.0 + x as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(logprobs(&logits, 3, 0).logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = vec![0.1, 2.0, 1.9, -1.0];
        let mut g = Sampler::new(SamplingParams::default());
        assert_eq!(g.sample(&logits, &[]), 1);
        // The repetition penalty can flip the choice.
        let mut r = Sampler::new(SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(r.sample(&logits, &[1]), 2);
        // Same seed, same draws; top_k 2 never picks outside the two best.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: 7,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..50).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t == 1 || t == 2));
        assert!(a.contains(&1) && a.contains(&2));
        // top_p 0.5 keeps only the best token here.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.3,
            seed: 1,
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits, &[]) == 1));
    }
}
