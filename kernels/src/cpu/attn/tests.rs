use half::f16;
use rand::{RngExt, SeedableRng};

use super::*;

/// Every path this CPU can run for head size `d`, by name.
fn paths(d: usize) -> Vec<&'static str> {
    let mut p = vec!["scalar"];
    for isa in Isa::supported() {
        match isa {
            Isa::Avx2 if d.is_multiple_of(8) => p.push("avx2"),
            Isa::Avx512 if d.is_multiple_of(16) => p.push("avx512"),
            _ => {}
        }
    }
    p
}

fn run<T: Element>(path: &str, h: Heads, q: &[f32], k: &[T], v: &[T], rows: &[usize]) -> Vec<f32> {
    let mut part = vec![f32::NAN; h.partial_len()];
    // attend_one checks the lengths and sets the partial's initial state, then runs the best
    // path; the named path then runs again over the same initial state.
    attend_one(h, q, k, v, rows, &mut part);
    if rows.is_empty() {
        return part;
    }
    reset(h, &mut part);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` names AVX-512 only where the CPU has it and 16 divides D.
        "avx512" => unsafe { attend_avx512(h, q, k, v, rows, &mut part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` names AVX2 only where the CPU has AVX2, FMA and F16C and 8 divides D.
        "avx2" => unsafe { attend_avx2(h, q, k, v, rows, &mut part) },
        _ => attend_scalar(h, q, k, v, rows, &mut part),
    }
    part
}

/// Every path, over f32 and f16 rows, grouped heads, scattered rows and runs of positions
/// across the block and vector boundaries, equals softmax(q·k)·v computed in f64 (the
/// partial's sums divided by its sum of weights; its maxima equal the largest score).
#[test]
fn attend_one_matches_the_plain_softmax() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (hq, hkv, d) in [
        (8, 2, 40),
        (16, 4, 64),
        (32, 8, 128),
        (4, 4, 16),
        (6, 2, 24),
    ] {
        let h = Heads { hq, hkv, d };
        let width = hkv * d;
        for n in [0, 1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 256] {
            let pool = n + 3;
            let k32: Vec<f32> = (0..pool * width)
                .map(|_| rng.random_range(-3.0..3.0))
                .collect();
            let v32: Vec<f32> = (0..pool * width)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let q: Vec<f32> = (0..hq * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            // Rows scattered over the pool, as a block table leaves them.
            let rows: Vec<usize> = (0..n).map(|j| (j * 5 + 2) % pool * width).collect();
            let (k16, v16): (Vec<f16>, Vec<f16>) = (
                k32.iter().map(|&x| f16::from_f32(x)).collect(),
                v32.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            for half in [false, true] {
                let (kf, vf): (Vec<f32>, Vec<f32>) = if half {
                    (
                        k16.iter().map(|x| x.to_f32()).collect(),
                        v16.iter().map(|x| x.to_f32()).collect(),
                    )
                } else {
                    (k32.clone(), v32.clone())
                };
                for path in paths(d) {
                    let part = if half {
                        run(path, h, &q, &k16, &v16, &rows)
                    } else {
                        run(path, h, &q, &k32, &v32, &rows)
                    };
                    for hd in 0..hq {
                        let at = hd / (hq / hkv) * d;
                        let s: Vec<f64> = rows
                            .iter()
                            .map(|&r| {
                                (0..d)
                                    .map(|i| q[hd * d + i] as f64 * kf[r + at + i] as f64)
                                    .sum()
                            })
                            .collect();
                        let (m, l) = (part[hq * d + hd], part[hq * d + hq + hd]);
                        let what =
                            format!("{path}, f16 {half}, {hq}/{hkv}x{d}, {n} rows, head {hd}");
                        if n == 0 {
                            assert!(m == f32::NEG_INFINITY && l == 0.0, "{what}");
                            assert!(part[hd * d..(hd + 1) * d].iter().all(|&x| x == 0.0));
                            continue;
                        }
                        let top = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        assert!(
                            (m as f64 - top).abs() < 1e-4,
                            "{what}: max {m} against {top}"
                        );
                        let total: f64 = s.iter().map(|x| (x - top).exp()).sum();
                        assert!(
                            (l as f64 / total - 1.0).abs() < 1e-5,
                            "{what}: sum {l} against {total}"
                        );
                        for i in 0..d {
                            let want: f64 = s
                                .iter()
                                .zip(&rows)
                                .map(|(x, &r)| (x - top).exp() / total * vf[r + at + i] as f64)
                                .sum();
                            let got = part[hd * d + i] as f64 / l as f64;
                            assert!(
                                (got - want).abs() < 2e-5,
                                "{what}, value {i}: {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn sums_add_each_vector_across_its_lanes() {
    fn check<L: Lanes>() {
        let v: Vec<f32> = (0..L::N * L::N)
            .map(|i| (i * i % 97) as f32 - 40.0)
            .collect();
        let mut out = vec![0f32; L::N];
        // SAFETY: the caller runs this only where the CPU has L's instruction set; `v` holds
        // N vectors and `out` one.
        unsafe {
            let vs: Vec<L::V> = v
                .chunks_exact(L::N)
                .map(|c| L::load_x(c.as_ptr()))
                .collect();
            L::store(out.as_mut_ptr(), L::sums(&vs));
        }
        for (j, &o) in out.iter().enumerate() {
            assert_eq!(
                o,
                v[j * L::N..(j + 1) * L::N].iter().sum::<f32>(),
                "lane {j}"
            );
        }
    }
    for isa in Isa::supported() {
        match isa {
            Isa::Avx2 => check::<Avx2>(),
            Isa::Avx512 => check::<Avx512>(),
            Isa::Scalar => {}
        }
    }
}

#[test]
fn exp_is_close_to_the_library_exp() {
    let mut worst = 0f32;
    for i in 0..=87_000 {
        let x = -(i as f32) / 1000.0;
        let (a, b) = (exp(x), x.exp());
        worst = worst.max((a - b).abs() / b);
    }
    assert!(worst < 3e-7, "relative error {worst}");
    assert!(exp(f32::NEG_INFINITY) < 1e-37);
    assert!(exp(f32::NAN) < 1e-37);
    assert_eq!(exp(0.0), 1.0);
}
