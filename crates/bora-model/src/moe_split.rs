//! The MoE step of a layer whose experts stay in host memory while the rest of the model is on
//! a device (`--cpu-moe`, `--n-cpu-moe`, the fit): the router runs on the device, the step's
//! routing comes to the host once, the assignments of experts that have a device copy
//! ([`crate::ExpertCache`]) run there, the rest run on bora's CPU kernels over the blocks as
//! mapped, and the two sums meet on the device. The device's work is queued first, so that a
//! GPU computes its experts while the CPU computes the others.

use bora_weights::{with_cpu_f32, Matrix};
use candle_core::{DType, Device, Tensor};

use crate::expert_cache::{LayerUsage, Resident};
use crate::moe::{HostExperts, RoutingStats};
use crate::router::route_tensor;
use crate::Result;

/// `x` `[T, H]` on the device → `[T, H]` on the device.
pub(crate) fn moe_split(
    router: &Matrix,
    experts: &HostExperts<'_>,
    x: &Tensor,
    layer: usize,
    stats: Option<&mut RoutingStats>,
    cache: Option<(&Resident, &mut LayerUsage)>,
) -> Result<Tensor> {
    let (t, h) = x.dims2()?;
    let a = experts.a;
    let logits = router.forward(x)?; // [T, E]
                                     // The rule of `router.rs`: bora's kernel on a CUDA device, candle's ops elsewhere.
    #[cfg(feature = "cuda")]
    let (idx, w) = if x.device().is_cuda() {
        bora_kernels::cuda::route_topk(&logits, a)?
    } else {
        route_tensor(&logits, a)?
    };
    #[cfg(not(feature = "cuda"))]
    let (idx, w) = route_tensor(&logits, a)?; // [T, A] each
                                              // The routing's one trip to the host in this layer.
    let chosen = idx.flatten_all()?.to_vec1::<u32>()?; // [T·A]
    let weights = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?; // [T·A]
    if let Some(s) = stats {
        s.record(layer, &chosen, &weights, || {
            logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        })?;
    }
    let (resident, usage) = match cache {
        Some((r, u)) => (Some(r), Some(u)),
        None => (None, None),
    };
    let on_device =
        |e: u32| resident.is_some_and(|r| r.get(e as usize).is_some_and(|slot| slot.is_some()));
    if let Some(u) = usage {
        u.record(&chosen, &on_device);
    }
    // The step's rows to the host now, while the stream is idle: a copy queued after the
    // device's experts would wait for them, and the CPU's share with it.
    let xs = if chosen.iter().any(|&c| !on_device(c)) {
        Some(
            x.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .contiguous()?,
        )
    } else {
        None
    };

    // The device's share first: queued before the CPU starts on its own.
    let mut out = x.zeros_like()?;
    if let Some(resident) = resident {
        let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); resident.len()];
        for (i, &c) in chosen.iter().enumerate() {
            if on_device(c) {
                by_expert[c as usize].push(i as u32);
            }
        }
        let w_dev = Tensor::from_slice(&weights, weights.len(), x.device())?.to_dtype(x.dtype())?;
        for (ex, assigned) in by_expert.iter().enumerate() {
            let Some(Some(dev)) = resident.get(ex).filter(|_| !assigned.is_empty()) else {
                continue;
            };
            let slots = Tensor::new(assigned.as_slice(), x.device())?;
            let toks: Vec<u32> = assigned.iter().map(|&i| i / a as u32).collect();
            let toks = Tensor::new(toks.as_slice(), x.device())?;
            let xe = x.index_select(&toks, 0)?; // [n, H]
            let g = dev.gate.forward(&xe)?; // [n, I]
            let u = dev.up.forward(&xe)?;
            let y = dev.down.forward(&(candle_nn::ops::silu(&g)? * u)?)?; // [n, H]
            let y = y.broadcast_mul(&w_dev.index_select(&slots, 0)?.unsqueeze(1)?)?;
            out = out.index_add(&toks, &y, 0)?;
        }
    }

    // The host's share on bora's kernels while the device computes its own; the sum back.
    if let Some(xs) = xs {
        let y = with_cpu_f32(&xs, |xs| {
            experts.run_routed(xs, t, h, &chosen, &weights, &|c| !on_device(c))
        })?;
        let y = Tensor::from_vec(y, (t, h), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        out = (out + y)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_weights::{preset_config, random_weights, Backend, Experts, LoadOptions, WeightDType};

    /// Issue 36, 2.4: a host-placed layer's MoE beside a model on a device (candle's CPU device
    /// standing in) is bora's CPU MoE: given the same routing, the same bits, in f32, bf16 and
    /// f16. (Its router runs on the device, in the device's dtype: the routing itself may differ
    /// from the CPU path's in its last bits, so the CPU path is given the split's.)
    #[test]
    fn a_host_layer_computes_what_the_cpu_path_computes_bit_for_bit() {
        let cfg = preset_config("demo").unwrap();
        let (t, h, a) = (9, cfg.hidden_size, cfg.num_experts_per_tok);
        for dtype in [WeightDType::F32, WeightDType::BF16, WeightDType::F16] {
            let mut split = LoadOptions::new(dtype, Device::Cpu);
            split.backend = Backend::Candle;
            split.host_experts = vec![true; cfg.num_hidden_layers];
            let on_device = random_weights(cfg.clone(), &split, 7).unwrap();
            let cpu =
                random_weights(cfg.clone(), &LoadOptions::new(dtype, Device::Cpu), 7).unwrap();
            let layer = 1;
            let x = Tensor::randn(0f32, 1.0, (t, h), &Device::Cpu)
                .unwrap()
                .to_dtype(on_device.layers[layer].attn_norm.dtype())
                .unwrap();
            let mut stats =
                RoutingStats::new(cfg.num_hidden_layers, cfg.num_local_experts).with_trace(false);
            let host = |w: &bora_weights::MixtralWeights| match &w.layers[layer].experts {
                Experts::Host { gate, up, down } => (gate.clone(), up.clone(), down.clone()),
                _ => panic!("{dtype:?}: layer {layer}'s experts are not on the host"),
            };
            let (gate, up, down) = host(&on_device);
            let experts = HostExperts {
                gate: &gate,
                up: &up,
                down: &down,
                a,
            };
            let got = moe_split(
                &on_device.layers[layer].router,
                &experts,
                &x,
                layer,
                Some(&mut stats),
                None,
            )
            .unwrap();
            let activations = match dtype {
                WeightDType::F32 => DType::F32,
                WeightDType::BF16 => DType::BF16,
                _ => DType::F16,
            };
            assert_eq!((x.dtype(), got.dtype()), (activations, activations));
            let routes = stats.take_trace();
            assert_eq!(routes.len(), 1);
            let (gate, up, down) = host(&cpu);
            let xs = x.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let want = HostExperts {
                gate: &gate,
                up: &up,
                down: &down,
                a,
            }
            .run_routed(
                &xs.to_vec1::<f32>().unwrap(),
                t,
                h,
                &routes[0].experts,
                &routes[0].weights,
                &|_| true,
            );
            let want = Tensor::from_vec(want, (t, h), &Device::Cpu)
                .unwrap()
                .to_dtype(x.dtype())
                .unwrap();
            let flat = |v: &Tensor| {
                v.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let (got, want) = (flat(&got), flat(&want));
            assert!(want.iter().any(|&v| v != 0.0));
            // `==`, not bits: the device adds the host's share to zeros, and 0 + -0 is 0.
            assert!(
                got == want,
                "{dtype:?}: the host layer's MoE differs from the CPU path's"
            );
        }
    }
}
