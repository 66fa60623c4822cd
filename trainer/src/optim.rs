//! Adam over two parameter groups (weights, biases), written with tensor operations
//! so that its state is plain named tensors in our checkpoints.
//!
//! The update is PyTorch's `torch.optim.Adam` (no weight decay, no amsgrad), step by
//! step in the same order of operations:
//!
//! ```text
//! m = lerp(m, g, 1 - b1);  v = v * b2 + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! Optional dynamic loss scaling for float16 mixed precision: gradients are checked
//! for inf/NaN, a step with non-finite gradients is skipped and halves the scale, and
//! the scale doubles after 2000 good steps (as `torch.amp.GradScaler`).

use tch::{Kind, Tensor};

/// One parameter and its moments.
#[derive(Debug)]
pub struct Slot {
    pub name: String,
    pub param: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

/// Adam with a weight group and a bias group (two learning rates).
#[derive(Debug)]
pub struct Adam {
    /// Group 0: weights; group 1: biases.
    pub groups: [Vec<Slot>; 2],
    pub betas: [f64; 2],
    pub eps: f64,
    /// Steps taken (bias corrections use it).
    pub step: i64,
    /// Loss scale of mixed precision (`None`: off).
    pub loss_scale: Option<f64>,
    /// Good steps since the last scale change.
    pub good_steps: u64,
}

impl Adam {
    /// Adam over `weights` and `biases`, given as `(name, tensor)` pairs.
    pub fn new(
        weights: Vec<(String, Tensor)>,
        biases: Vec<(String, Tensor)>,
        betas: [f64; 2],
        eps: f64,
    ) -> Self {
        let slots = |v: Vec<(String, Tensor)>| {
            v.into_iter()
                .map(|(name, param)| Slot {
                    name,
                    m: param.zeros_like().detach(),
                    v: param.zeros_like().detach(),
                    param,
                })
                .collect()
        };
        Self {
            groups: [slots(weights), slots(biases)],
            betas,
            eps,
            step: 0,
            loss_scale: None,
            good_steps: 0,
        }
    }

    /// Every slot, weights first.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.groups.iter().flatten()
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for s in self.groups.iter_mut().flatten() {
            s.param.zero_grad();
        }
    }

    /// Whether every gradient is finite.
    fn grads_finite(&self) -> bool {
        self.slots().all(|s| {
            let g = s.param.grad();
            !g.defined() || g.isfinite().all().int64_value(&[]) != 0
        })
    }

    /// One update with learning rates `lrs = [weights, biases]`. With loss scaling the
    /// gradients are unscaled first, and a step with non-finite gradients is skipped
    /// (returns false).
    pub fn step(&mut self, lrs: [f64; 2]) -> bool {
        if let Some(scale) = self.loss_scale {
            if !self.grads_finite() {
                self.loss_scale = Some((scale / 2.0).max(1.0));
                self.good_steps = 0;
                return false;
            }
            tch::no_grad(|| {
                for s in self.groups.iter_mut().flatten() {
                    let mut g = s.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(1.0 / scale);
                    }
                }
            });
            self.good_steps += 1;
            if self.good_steps >= 2000 {
                self.loss_scale = Some(scale * 2.0);
                self.good_steps = 0;
            }
        }
        self.step += 1;
        let [b1, b2] = self.betas;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let eps = self.eps;
        tch::no_grad(|| {
            for (group, lr) in self.groups.iter_mut().zip(lrs) {
                let step_size = lr / bc1;
                for s in group.iter_mut() {
                    let g = s.param.grad();
                    if !g.defined() {
                        continue;
                    }
                    let _ = s.m.lerp_(&g, 1.0 - b1);
                    let _ = s.v.g_mul_scalar_(b2);
                    let _ = s.v.g_add_(&(&g * &g * (1.0 - b2)));
                    let denom = (s.v.sqrt() / bc2_sqrt) + eps;
                    let _ = s.param.g_sub_(&(&s.m / denom * step_size));
                }
            }
        });
        true
    }

    /// The state as named tensors (`adam.m.<param>`, `adam.v.<param>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in self.slots() {
            out.push((format!("adam.m.{}", s.name), s.m.shallow_clone()));
            out.push((format!("adam.v.{}", s.name), s.v.shallow_clone()));
        }
        out
    }

    /// Restores the moments from named tensors written by [`Adam::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> anyhow::Result<()> {
        for s in self.groups.iter_mut().flatten() {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let name = format!("adam.{key}.{}", s.name);
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| anyhow::anyhow!("optimiser state `{name}` missing"))?;
                if t.size() != dst.size() {
                    anyhow::bail!(
                        "optimiser state `{name}` has shape {:?}, expected {:?}",
                        t.size(),
                        dst.size()
                    );
                }
                tch::no_grad(|| {
                    dst.copy_(&t.to_kind(Kind::Float).to_device(dst.device()));
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: one parameter, constant gradient 1, lr 0.1, betas (0.9, 0.99):
    /// m_1 = 0.1, v_1 = 0.01, m^ = 1, v^ = 1 -> p -= 0.1 * 1 / (1 + eps).
    #[test]
    fn first_step_moves_by_lr() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut adam = Adam::new(
            vec![("w".into(), p.shallow_clone())],
            vec![],
            [0.9, 0.99],
            1e-8,
        );
        adam.zero_grad();
        (&p * Tensor::from_slice(&[1.0f32, -1.0]))
            .sum(Kind::Float)
            .backward();
        adam.step([0.1, 0.2]);
        let v: Vec<f32> = p.detach().try_into().unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-6 && (v[1] + 1.9).abs() < 1e-6,
            "{v:?}"
        );
    }

    /// The same five steps in `torch.optim.Adam` (two parameter groups) of the
    /// project's venv; skipped when the venv is absent.
    #[test]
    fn matches_torch_optim_adam() {
        let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        if !py.is_file() {
            eprintln!("skipped: {} not found", py.display());
            return;
        }
        let grad = |t: usize, n: usize, salt: f32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    ((t as f32 + 1.0) * (i as f32 + salt)).sin() * 10f32.powi(i as i32 % 3 - 1)
                })
                .collect()
        };
        let w0: Vec<f32> = (0..6).map(|i| i as f32 * 0.1 - 0.3).collect();
        let b0 = vec![0.5f32, -0.25, 0.0];
        let w = Tensor::from_slice(&w0).view([3, 2]).set_requires_grad(true);
        let b = Tensor::from_slice(&b0).set_requires_grad(true);
        let mut adam = Adam::new(
            vec![("w".into(), w.shallow_clone())],
            vec![("b".into(), b.shallow_clone())],
            [0.9, 0.99],
            1e-8,
        );
        for t in 0..5 {
            adam.zero_grad();
            let gw = Tensor::from_slice(&grad(t, 6, 1.0)).view([3, 2]);
            let gb = Tensor::from_slice(&grad(t, 3, 2.0));
            ((&w * gw).sum(Kind::Float) + (&b * gb).sum(Kind::Float)).backward();
            adam.step([0.01, 0.02]);
        }
        let script = format!(
            r#"
import json, math, torch
def grad(t, n, salt):
    return [math.sin(float(t + 1) * (i + salt)) * 10.0 ** (i % 3 - 1) for i in range(n)]
w = torch.tensor({w0:?}, dtype=torch.float32).view(3, 2).requires_grad_()
b = torch.tensor({b0:?}, dtype=torch.float32).requires_grad_()
opt = torch.optim.Adam([{{"params": [w], "lr": 0.01}}, {{"params": [b], "lr": 0.02}}], betas=(0.9, 0.99), eps=1e-8, foreach=False)
for t in range(5):
    opt.zero_grad()
    w.grad = torch.tensor(grad(t, 6, 1.0), dtype=torch.float32).view(3, 2)
    b.grad = torch.tensor(grad(t, 3, 2.0), dtype=torch.float32)
    opt.step()
print(json.dumps(w.detach().flatten().tolist() + b.detach().tolist()))
"#
        );
        let out = std::process::Command::new(&py)
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<f32> =
            Vec::try_from(Tensor::cat(&[w.detach().flatten(0, -1), b.detach()], 0)).unwrap();
        for (g, t) in got.iter().zip(&want) {
            assert!((*g as f64 - t).abs() < 1e-6, "ours {got:?}\ntorch {want:?}");
        }
    }
}
