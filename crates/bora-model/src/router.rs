//! Top-k routing: softmax over the router's logits, the `A` most probable experts, their
//! probabilities renormalized to sum to one (transformers' `MixtralTopKRouter`). Ties go to the
//! lower expert index.

use candle_core::{DType, Tensor};

/// Routes one token: writes the chosen experts (most probable first) and their weights.
/// `logits` has one entry per expert; `experts` and `weights` have `A` entries.
pub fn route(logits: &[f32], experts: &mut [u32], weights: &mut [f32]) {
    let a = experts.len();
    debug_assert!(a <= logits.len() && weights.len() == a);
    // Softmax in f32 like transformers (`softmax(router_logits.float())`).
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut chosen = 0;
    // Selection by repeated scan: A is small (2 for Mixtral) and E is 8 to a few dozen.
    while chosen < a {
        let mut best: Option<usize> = None;
        for (e, &v) in logits.iter().enumerate() {
            if experts[..chosen].contains(&(e as u32)) {
                continue;
            }
            if best.is_none_or(|b| v > logits[b]) {
                best = Some(e);
            }
        }
        let Some(b) = best else { break };
        experts[chosen] = b as u32;
        chosen += 1;
    }
    let denom: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    let mut total = 0.0;
    for (w, &e) in weights.iter_mut().zip(experts.iter()) {
        *w = (logits[e as usize] - max).exp() / denom;
        total += *w;
    }
    for w in weights.iter_mut() {
        *w /= total;
    }
}

/// Routes every token of `logits` `[T, E]` on its device: `(experts [T, A] u32, weights [T, A]
/// f32)`, with the same order and ties as [`route`].
pub fn route_tensor(logits: &Tensor, a: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    let idx = probs
        .arg_sort_last_dim(false)?
        .narrow(1, 0, a)?
        .contiguous()?;
    let w = probs.gather(&idx, 1)?;
    let w = w.broadcast_div(&w.sum_keepdim(1)?)?;
    Ok((idx, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The scalar reference: a full softmax, a stable sort by probability (descending), the
    /// first `a`, renormalized.
    fn reference(logits: &[f32], a: usize) -> (Vec<u32>, Vec<f32>) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let s: f64 = p.iter().sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&i, &j| p[j].partial_cmp(&p[i]).unwrap());
        let top: Vec<usize> = order[..a].to_vec();
        let ts: f64 = top.iter().map(|&i| p[i] / s).sum();
        (
            top.iter().map(|&i| i as u32).collect(),
            top.iter().map(|&i| (p[i] / s / ts) as f32).collect(),
        )
    }

    fn cases() -> Vec<(Vec<f32>, usize)> {
        vec![
            (vec![0.1, 2.0, -1.0, 1.5, 0.0, 0.3, -0.2, 1.9], 2),
            // Ties: equal logits go to the lower index, also across the cut-off.
            (vec![1.0, 3.0, 3.0, 0.0, 3.0, -1.0, 0.5, 0.2], 2),
            (vec![0.0; 8], 2),
            (vec![5.0, -5.0, 5.0, 5.0, 1.0, 2.0], 3),
            (vec![-1.0, -2.0, -0.5, -3.0], 1),
            (vec![0.25, 0.25, 0.5, 0.5], 4),
        ]
    }

    #[test]
    fn route_matches_reference() {
        for (logits, a) in cases() {
            let (want_e, want_w) = reference(&logits, a);
            let mut e = vec![0u32; a];
            let mut w = vec![0f32; a];
            route(&logits, &mut e, &mut w);
            assert_eq!(e, want_e, "{logits:?}");
            for (x, y) in w.iter().zip(&want_w) {
                assert!((x - y).abs() < 1e-6, "{logits:?}: {w:?} vs {want_w:?}");
            }
        }
    }

    #[test]
    fn route_tensor_matches_reference() {
        for (logits, a) in cases() {
            let (want_e, want_w) = reference(&logits, a);
            let t = Tensor::from_vec(logits.clone(), (1, logits.len()), &Device::Cpu).unwrap();
            let (e, w) = route_tensor(&t, a).unwrap();
            assert_eq!(e.to_vec2::<u32>().unwrap()[0], want_e, "{logits:?}");
            for (x, y) in w.to_vec2::<f32>().unwrap()[0].iter().zip(&want_w) {
                assert!((x - y).abs() < 1e-6, "{logits:?}");
            }
        }
    }
}
